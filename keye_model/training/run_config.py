"""What one stage run is given (``RunConfig``) and what it returns (``StageResult``).

Both round-trip through JSON: launchers write the config to a file that every rank reads, and a
finished stage leaves its result in ``result.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from data_specs.stages import StageSpec


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one stage run needs; JSON round-trips so launchers can pass it to each rank."""

    stage: StageSpec
    """What to train (data_specs.stages)."""
    output_dir: str
    """Where checkpoints, metrics and the result go."""
    tokenizer_dir: str
    """A local tokenizer directory (the tiny one the pipeline trains, or a real one)."""
    init_checkpoint: str | None = None
    """HF-format Keye checkpoint to start from; None builds ``preset``'s model from scratch."""
    model_preset: str = "tiny"
    """Model shape (a ``KeyeConfig.preset`` name) built when there is no init checkpoint."""
    vision_init: str | None = None
    """Without an init checkpoint: a local SigLIP directory the ViT starts from (None: random init)."""
    llm_init: str | None = None
    """Without an init checkpoint: a local Qwen3 directory the LLM starts from (None: random init)."""
    shards: tuple[str, ...] = ()
    """WebDataset shards of the stage's data."""
    shard_sha256s: tuple[str, ...] = ()
    """The manifest's sha256 of each shard; the stage refuses to start on a shard that differs. Empty: the
    shards are read unchecked (logged)."""
    shard_num_bytes: tuple[int, ...] = ()
    """The manifest's size of each shard in bytes, checked with the sha256s."""
    expert_checkpoints: tuple[str, ...] = ()
    """Fusion: the expert checkpoints merged into ``init_checkpoint``."""
    reward_model_checkpoint: str | None = None
    """The checkpoint of the stage's ``reward_model`` stage (a trained pairwise judge), if it names one."""
    image_min_tokens: int = 4
    """Fewest LLM tokens an image is resized to (``ProcessorConfig.image_min_tokens``); saved with the
    checkpoint, so whatever loads it reads images the same way."""
    seed: int = 0
    """Seeds the model init, the shard order and sampling."""
    stop_after_steps: int | None = None
    """Stop (without the final checkpoint) after this many steps: how tests simulate a crash."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        data = json.loads(text)
        data["stage"] = StageSpec.from_json(json.dumps(data["stage"]))
        for key in ("shards", "expert_checkpoints", "shard_sha256s", "shard_num_bytes"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class StageResult:
    stage: str
    checkpoint_dir: str
    steps: int
    samples_seen: int
    tokens_seen: int
    final_loss: float | None
    wall_s: float
    finished_at: float | None = None
    """When the stage finished (Unix time), the order a run's stages ended in (``tasks.train.training_minutes``);
    None in results written before it was recorded."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
