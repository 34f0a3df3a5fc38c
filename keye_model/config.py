"""Model configuration: vision encoder, projector and language model shapes, and the presets.

A complete model is a ``KeyeConfig``; presets are functions returning one (``tiny``, ``keye_8b``), and a
variant changes a few fields with ``dataclasses.replace``::

    cfg = KeyeConfig.preset("tiny")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, rope_theta=8_000_000.0))

The placeholder token ids (``image_token_id``, ``video_token_id``) are never written into a preset: they
come from the tokenizer when the model is built (see ``keye_model.special_tokens``).

JSON round trip: ``KeyeConfig.from_json(cfg.to_json()) == cfg``; ``cfg.save(dir)`` / ``KeyeConfig.load(dir)``
use ``dir/keye_config.json``. This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: File name of the config inside a saved model directory.
CONFIG_FILE = "keye_config.json"

#: Vision attention kernels (see ``vision_encoder.py``).
VISION_ATTENTION = ("auto", "mask", "loop", "varlen")


@dataclass(kw_only=True, frozen=True)
class VisionConfig:
    """The SigLIP-shaped vision transformer over native-resolution patches."""

    hidden_size: int = 1152
    """Width D of the ViT residual stream."""
    num_hidden_layers: int = 27
    """Number of encoder layers."""
    num_attention_heads: int = 16
    """Attention heads; head_dim = hidden_size / num_attention_heads (72 for so400m)."""
    intermediate_size: int = 4304
    """Hidden width of each layer's MLP."""
    hidden_act: str = "gelu_pytorch_tanh"
    """MLP activation, a transformers ACT2FN name."""
    layer_norm_eps: float = 1e-6
    """Epsilon of every LayerNorm in the ViT."""
    patch_size: int = 14
    """Side in pixels of one square patch."""
    num_channels: int = 3
    """Input channels; a flattened patch has num_channels * patch_size**2 values."""
    position_grid_size: int = 27
    """Side of the learned absolute position grid (27x27 for so400m-patch14-384); it is interpolated
    bilinearly to each image's patch grid."""
    use_rope_2d: bool = True
    """Add the 2D rotary embedding on q and k (SPEC section 1). Off reproduces plain SigLIP."""
    rope_theta: float = 10_000.0
    """Base of the 2D rotary frequencies."""
    attention: str = "auto"
    """Kernel for block-diagonal attention over packed images: "mask" (one SDPA with an N x N boolean
    mask), "loop" (one SDPA per distinct image length, images of that length batched: a video is one
    call), "varlen" (torch varlen flash kernel, CUDA half precision), or "auto" (varlen on CUDA in
    fp16/bf16, loop otherwise)."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights when built from scratch."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"VisionConfig: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.use_rope_2d and self.head_dim % 4:
            raise ValueError(
                f"VisionConfig: 2D RoPE needs head_dim divisible by 4 (two axes, rotate-half pairs), "
                f"got {self.head_dim}"
            )
        if self.attention not in VISION_ATTENTION:
            raise ValueError(f"VisionConfig: attention {self.attention!r} not in {VISION_ATTENTION}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch, C*p*p (588 for RGB 14x14)."""
        return self.num_channels * self.patch_size * self.patch_size


@dataclass(kw_only=True, frozen=True)
class ProjectorConfig:
    """The patch merger between the ViT and the LLM; its widths derive from the vision and text widths."""

    merge_size: int = 2
    """Patches merged per side: merge_size**2 neighbouring patches become one LLM token."""
    layer_norm_eps: float = 1e-5
    """Epsilon of the LayerNorm over the merged (merge_size**2 * D) vector."""
    hidden_act: str = "gelu"
    """Activation between the two linears, a transformers ACT2FN name ("gelu" is the exact erf GELU)."""

    def __post_init__(self) -> None:
        if self.merge_size < 1:
            raise ValueError(f"ProjectorConfig: merge_size must be >= 1, got {self.merge_size}")


@dataclass(kw_only=True, frozen=True)
class TextConfig:
    """The Qwen3 decoder; field names follow transformers' Qwen3Config except ``rope_theta``."""

    vocab_size: int = 151_936
    """Rows of the input embedding and of the LM head."""
    hidden_size: int = 4096
    """Width of the LLM residual stream (the projector's output width)."""
    num_hidden_layers: int = 36
    """Number of decoder layers."""
    num_attention_heads: int = 32
    """Query heads."""
    num_key_value_heads: int = 8
    """Key/value heads (grouped-query attention)."""
    head_dim: int = 128
    """Width of one attention head."""
    intermediate_size: int = 12_288
    """Hidden width of the SiLU-gated MLP."""
    hidden_act: str = "silu"
    """MLP activation."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm (incl. q/k norm)."""
    rope_theta: float = 1_000_000.0
    """RoPE base; stage 3 resets it to 8,000,000 for 131,072-token context."""
    mrope_section: tuple[int, ...] = ()
    """Multimodal RoPE: how many of the head_dim/2 rotary frequencies follow the t, h and w position
    (keye_model.mrope; [16, 24, 24] at 8B). Empty: plain 1D RoPE (what configs saved before M-RoPE mean)."""
    max_position_embeddings: int = 40_960
    """Longest sequence the rotary cache is sized for (informational for default RoPE)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the LM head (Qwen3-8B: no)."""
    attention_bias: bool = False
    """Bias on q/k/v/o projections."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights when built from scratch."""

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TextConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.rope_theta <= 0:
            raise ValueError(f"TextConfig: rope_theta must be positive, got {self.rope_theta}")
        # JSON gives a list; a tuple keeps the frozen config hashable and equal to the preset it came from.
        object.__setattr__(self, "mrope_section", tuple(self.mrope_section))
        if self.mrope_section and (
            len(self.mrope_section) != 3 or min(self.mrope_section) < 1 or sum(self.mrope_section) != self.head_dim // 2
        ):
            raise ValueError(
                f"TextConfig: mrope_section {list(self.mrope_section)} must be three positive counts (t, h, w) "
                f"summing to head_dim / 2 = {self.head_dim // 2}"
            )


@dataclass(kw_only=True, frozen=True)
class KeyeConfig:
    """A whole Keye model."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """The ViT."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """The patch merger."""
    text: TextConfig = field(default_factory=TextConfig)
    """The language model."""
    image_token_id: int | None = None
    """Id of ``<|image_pad|>`` in the tokenizer; set at build time from the tokenizer."""
    video_token_id: int | None = None
    """Id of ``<|video_pad|>`` in the tokenizer; set at build time from the tokenizer."""

    def __post_init__(self) -> None:
        for name in ("image_token_id", "video_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.text.vocab_size:
                raise ValueError(
                    f"KeyeConfig: {name} {token_id} is outside the text vocabulary [0, {self.text.vocab_size})"
                )

    @property
    def placeholder_token_ids(self) -> tuple[int, ...]:
        """The ids whose positions receive visual features (those that are set)."""
        return tuple(t for t in (self.image_token_id, self.video_token_id) if t is not None)

    # ---- presets -------------------------------------------------------------------------------
    @staticmethod
    def preset(name: str) -> KeyeConfig:
        """The named preset (see ``PRESETS``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]()

    # ---- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyeConfig:
        data = dict(data)
        parts = {"vision": VisionConfig, "projector": ProjectorConfig, "text": TextConfig}
        for key, part_cls in parts.items():
            if key in data:
                data[key] = _build(part_cls, data[key], where=f"KeyeConfig.{key}")
        return _build(cls, data, where="KeyeConfig")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeyeConfig:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/keye_config.json`` (creating the directory); returns the file path."""
        path = Path(directory) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="ascii")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> KeyeConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in model directory {directory}")
        return cls.from_json(path.read_text(encoding="ascii"))


def _build(cls: type, data: Any, *, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


# ---- presets -----------------------------------------------------------------------------------
def tiny() -> KeyeConfig:
    """About 2.3M parameters, 4096-token vocabulary: forward+backward in milliseconds on a CPU.

    The position grid is 4x4, so a 56x56 image (4x4 patches, 2x2 = 4 LLM tokens) is at native size.
    """
    return KeyeConfig(
        vision=VisionConfig(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            position_grid_size=4,
        ),
        projector=ProjectorConfig(),
        text=TextConfig(
            vocab_size=4096,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=384,
            max_position_embeddings=4096,
            mrope_section=(4, 6, 6),  # 16 rotary frequencies, split as 8B's [16, 24, 24] of 64
        ),
    )


def keye_8b() -> KeyeConfig:
    """SigLIP-so400m-patch14-384 + Qwen3-8B, as in Keye-VL-1.5-8B (SPEC section 1)."""
    return KeyeConfig(vision=VisionConfig(), projector=ProjectorConfig(), text=TextConfig(mrope_section=(16, 24, 24)))


PRESETS: dict[str, Callable[[], KeyeConfig]] = {"tiny": tiny, "keye-8b": keye_8b}
