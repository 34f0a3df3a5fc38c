"""Checks of the pretrained parts a run starts from: a SigLIP directory (the ViT) and a Qwen3 directory (the LLM).

``check_parts`` reads only their ``config.json`` files and weight file names, so a run (or a dry run) can
refuse a missing, foreign or wrongly shaped directory in a second, before curation spends hours and
before any weight is loaded. ``KeyeForConditionalGeneration.from_parts`` calls it before loading.

Example: the keye-8b model (``KeyeConfig.preset("keye-8b")``) takes ``siglip-so400m-patch14-384``
(hidden 1152, 27 layers, 16 heads, MLP 4304, 384 / 14 = 27 positions a side) and ``Qwen3-8B``
(hidden 4096, 36 layers, 32 query and 8 key/value heads, vocabulary 151,936); a Qwen3-4B directory is
refused with ``'hidden_size': (2560, 4096)`` among its differences.
"""

from __future__ import annotations

import json
from pathlib import Path

from keye_model.config import KeyeConfig, TextConfig, VisionConfig

#: ``model_type`` values of a SigLIP directory: a whole SigLIP (vision + text) or its vision tower alone.
SIGLIP_TYPES = ("siglip", "siglip_vision_model")

#: VisionConfig fields a SigLIP directory must agree on (shapes, and the activation and norm epsilon that
#: change its outputs without changing a shape).
VISION_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "patch_size",
    "num_channels",
    "position_grid_size",
)

#: TextConfig fields a Qwen3 directory must agree on (``rope_theta`` is not one: the stage sets it).
TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "hidden_act",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
)


def model_type(directory: str | Path, role: str) -> str:
    """The ``model_type`` of a local model directory; FileNotFoundError / ValueError naming ``role`` and it."""
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{role} directory {directory} does not exist")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{role} directory {directory} has no config.json (not a save_pretrained folder)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{role} directory {directory} has no *.safetensors weights")
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{role} directory {directory}: config.json has no model_type ({exc})") from exc


def _differences(found, wanted, fields: tuple[str, ...]) -> dict[str, tuple]:
    pairs = {name: (getattr(found, name), getattr(wanted, name)) for name in fields}
    return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


def check_vision_dir(directory: str | Path, vision: VisionConfig) -> None:
    """ValueError unless ``directory`` is a SigLIP checkpoint of ``vision``'s shape."""
    from keye_model.vision_encoder import vision_config_from_siglip

    kind = model_type(directory, "SigLIP (vision init)")
    if kind not in SIGLIP_TYPES:
        raise ValueError(f"vision init directory {directory} holds a {kind!r} model, expected one of {SIGLIP_TYPES}")
    diffs = _differences(vision_config_from_siglip(directory), vision, VISION_FIELDS)
    if diffs:
        raise ValueError(f"SigLIP checkpoint {directory} does not fit the model's VisionConfig: (ckpt, config) {diffs}")


def check_llm_dir(directory: str | Path, text: TextConfig) -> None:
    """ValueError unless ``directory`` is a Qwen3 checkpoint of ``text``'s shape."""
    from transformers import Qwen3Config

    from keye_model.decoder import text_config_from_qwen3

    kind = model_type(directory, "Qwen3 (LLM init)")
    if kind != "qwen3":
        raise ValueError(f"LLM init directory {directory} holds a {kind!r} model, expected 'qwen3'")
    found = text_config_from_qwen3(Qwen3Config.from_pretrained(str(directory), local_files_only=True))
    diffs = _differences(found, text, TEXT_FIELDS)
    if diffs:
        raise ValueError(f"Qwen3 checkpoint {directory} does not fit TextConfig: (ckpt, config) {diffs}")


def check_parts(config: KeyeConfig, vision_dir: str | Path | None, llm_dir: str | Path | None) -> None:
    """Check whichever of the two directories is given against ``config``."""
    if vision_dir is not None:
        check_vision_dir(vision_dir, config.vision)
    if llm_dir is not None:
        check_llm_dir(llm_dir, config.text)
