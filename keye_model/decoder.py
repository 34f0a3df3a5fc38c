"""The language model: a transformers Qwen3ForCausalLM built from a ``TextConfig`` or a local directory.

Positions: 1D RoPE as built; ``use_mrope`` swaps in the multimodal rotary module (keye_model.mrope), which
takes (3, B, L) t/h/w position ids and treats (B, L) ids as text. It has no weights and is not recorded in
the Qwen3 config, so the decoder still saves as a plain Qwen3 checkpoint: loaded with 1D RoPE there, it
computes exactly what it does here on text (t = h = w). The RoPE base lives in
``config.rope_parameters["rope_theta"]`` (transformers v5) and in the rotary module's ``inv_freq``
buffer, computed once at construction; ``set_rope_theta`` rewrites both, which is what stage 3's
reset to 8,000,000 needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from keye_model.config import TextConfig
from keye_model.mrope import MultimodalRotaryEmbedding

#: TextConfig fields that fix parameter shapes; a loaded checkpoint must agree on all of them.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "tie_word_embeddings",
    "attention_bias",
)


def qwen3_config(text: TextConfig) -> Qwen3Config:
    """The transformers config for a TextConfig (SDPA attention, no sliding window)."""
    hf = Qwen3Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        intermediate_size=text.intermediate_size,
        hidden_act=text.hidden_act,
        rms_norm_eps=text.rms_norm_eps,
        max_position_embeddings=text.max_position_embeddings,
        tie_word_embeddings=text.tie_word_embeddings,
        attention_bias=text.attention_bias,
        initializer_range=text.initializer_range,
        rope_parameters={"rope_type": "default", "rope_theta": float(text.rope_theta)},
        use_sliding_window=False,
    )
    hf._attn_implementation = "sdpa"
    return hf


def text_config_from_qwen3(hf: Qwen3Config, **overrides) -> TextConfig:
    """The TextConfig of a transformers Qwen3Config (fields may be overridden)."""
    fields = {name: getattr(hf, name) for name in SHAPE_FIELDS}
    fields.update(
        hidden_act=hf.hidden_act,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=float(rope_theta(hf)),
        max_position_embeddings=hf.max_position_embeddings,
        initializer_range=hf.initializer_range,
    )
    fields.update(overrides)
    return TextConfig(**fields)


def rope_theta(hf: Qwen3Config) -> float:
    params = hf.rope_parameters or {}
    if "rope_theta" not in params:
        raise ValueError(f"Qwen3 config has no rope_parameters['rope_theta']: {params}")
    return float(params["rope_theta"])


def build_decoder(text: TextConfig) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3ForCausalLM (transformers' init: normal(initializer_range))."""
    return Qwen3ForCausalLM(qwen3_config(text))


def load_decoder(directory: str | Path, dtype: torch.dtype | None = None) -> Qwen3ForCausalLM:
    """A Qwen3ForCausalLM from a local ``save_pretrained`` directory (no hub access)."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in Qwen3 directory {directory}")
    model = Qwen3ForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    if model.config.model_type != "qwen3":
        raise ValueError(f"{directory} holds a {model.config.model_type!r} model, expected 'qwen3'")
    return model


def check_decoder_matches(model: Qwen3ForCausalLM, text: TextConfig, source: str) -> None:
    """ValueError listing every shape field where a loaded decoder differs from ``text``."""
    diffs = {
        name: (getattr(model.config, name), getattr(text, name))
        for name in SHAPE_FIELDS
        if getattr(model.config, name) != getattr(text, name)
    }
    if diffs:
        raise ValueError(f"Qwen3 checkpoint {source} does not fit TextConfig: (ckpt, config) {diffs}")


def use_mrope(model: Qwen3ForCausalLM, mrope_section: tuple[int, ...]) -> None:
    """Replace the decoder's rotary module by the M-RoPE one (same base, frequencies kept in float32)."""
    rotary = model.model.rotary_emb
    if rotary.rope_type != "default":
        raise ValueError(f"M-RoPE needs default RoPE, the decoder uses {rotary.rope_type!r}")
    mrope = MultimodalRotaryEmbedding(model.config, mrope_section)
    model.model.rotary_emb = mrope.to(rotary.inv_freq.device)


def set_rope_theta(model: Qwen3ForCausalLM, theta: float) -> None:
    """Change the RoPE base of a built decoder: the config and the rotary inv_freq buffers.

    Also the way to restore float32 frequencies after casting the model with ``.to(torch.bfloat16)``.
    """
    if theta <= 0:
        raise ValueError(f"rope theta must be positive, got {theta}")
    rotary = model.model.rotary_emb
    buffer = rotary.inv_freq
    if rotary.rope_type != "default":
        raise ValueError(f"set_rope_theta supports default RoPE only, the decoder uses {rotary.rope_type!r}")
    model.config.rope_parameters = {**model.config.rope_parameters, "rope_theta": float(theta)}
    inv_freq, scaling = rotary.compute_default_rope_parameters(model.config)
    # float32 whatever the model dtype: a bf16 inv_freq loses the long-wavelength frequencies
    rotary.inv_freq = inv_freq.to(device=buffer.device, dtype=torch.float32)
    rotary.original_inv_freq = rotary.inv_freq.clone()
    rotary.attention_scaling = scaling
