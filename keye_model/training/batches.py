"""A rank's micro batches: balanced windows of the shard stream, encoded by the processor and packed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from keye_model.processor import KeyeProcessor
from keye_model.training import balance, examples
from keye_model.training.loader import ShardStream, assign_window, media_of
from keye_model.training.packing import Encoded, Packed, pack
from keye_model.training.run_config import RunConfig


class Batches:
    """The rank's micro batches: balanced windows of the shard stream, encoded and packed."""

    def __init__(self, config: RunConfig, processor: KeyeProcessor, rank: int, world_size: int) -> None:
        self.config = config
        self.stage = config.stage
        self.processor = processor
        self.rank, self.world_size = rank, world_size
        self.stream = ShardStream(config.shards, seed=config.seed)
        self.media_cache = Path(config.output_dir) / "media-cache"
        self._iter: Iterator[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)
        self._iter = None

    def next_window(self) -> list[dict[str, Any]]:
        if self._iter is None:
            self._iter = iter(self.stream)
        return [next(self._iter) for _ in range(self.world_size * self.stage.micro_batch_size)]

    def my_examples(self) -> list[examples.Example]:
        window = self.next_window()
        costs = [estimate_cost(sample) for sample in window]
        return [examples.to_example(window[i], self.media_cache) for i in assign_window(costs, self.world_size, self.rank)]

    def encode(self, conversation: examples.Conversation, sample_id: str, weight: float = 1.0) -> Encoded:
        return Encoded.from_batch(sample_id, self.processor([conversation], sample_ids=[sample_id]), weight)

    def next_packed(self) -> Packed:
        """Micro batch for lm / weighted_lm / reward objectives."""
        encoded = []
        for ex in self.my_examples():
            if self.stage.objective == "reward":
                for i, conv in enumerate(examples.judge_conversations(ex)):
                    encoded.append(self.encode(conv, f"{ex.sample_id}-judge{i}"))
            else:
                encoded.append(self.encode(examples.sft_conversation(ex), ex.sample_id, ex.weight))
        return pack(encoded, self.stage.seq_len, self.processor.tokenizer.pad_token_id)

    def next_pairs(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Micro batch for MPO: chosen rows then rejected rows, padded (no packing: log-probs per row)."""
        exs = self.my_examples()
        pairs = [examples.preference_conversations(ex) for ex in exs]
        convs = [c for c, _ in pairs] + [r for _, r in pairs]
        ids = [ex.sample_id for ex in exs]
        return self.processor(convs, sample_ids=[f"{i}-chosen" for i in ids] + [f"{i}-rejected" for i in ids]), ids


def estimate_cost(sample: dict[str, Any], model: balance.CostModel = balance.CostModel()) -> float:
    """Cheap pre-decode cost estimate of a raw sample (SPEC.md section 5), from sizes alone.

    The LLM term uses the token estimate the sharder stored (``tokens``); the ViT term counts 4 patches
    per visual token: per frame for a video (from its plan), and for an image all of the sample's tokens
    (its text is short next to its visual tokens).
    """
    record = json.loads(sample.get("json", b"{}"))
    tokens = int(record.get("tokens", len(sample.get("json", b"")) // 4))
    if "plan.json" in sample:
        patches = [4 * frame["tokens"] for frame in json.loads(sample["plan.json"])["frames"]]
    elif media_of(sample) is not None:
        patches = [4 * tokens]
    else:
        patches = []
    return balance.sample_cost(patches, tokens, model)
