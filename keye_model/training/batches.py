"""A rank's share of the shard stream: balanced global batches of examples, and the processor calls that encode
and pack them.

One optimizer step reads one window of ``world_size * micro_batch_size * grad_accum_steps`` samples;
every rank computes the same assignment of the whole window (``balance.assign_global_batch``) and then
takes its share micro batch by micro batch. The stream state is saved per optimizer step, when a window
is used up, so a resumed run starts at the next window (sample-exact).

What an example becomes (a conversation, a preference pair, a judging prompt, an RL prompt) is the
objective's business (``keye_model.training.objectives``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keye_model.processor import KeyeProcessor
from keye_model.training import balance, examples
from keye_model.training.loader import ShardStream, media_of, sample_record
from keye_model.training.packing import Encoded, Packed, pack
from keye_model.training.run_config import RunConfig


class Batches:
    """The rank's micro batches: balanced windows of the shard stream, encoded and packed."""

    def __init__(self, config: RunConfig, processor: KeyeProcessor, rank: int, world_size: int) -> None:
        self.config = config
        self.stage = config.stage
        self.processor = processor
        self.rank, self.world_size = rank, world_size
        self.stream = ShardStream(
            config.shards, seed=config.seed, sha256s=config.shard_sha256s, num_bytes=config.shard_num_bytes
        )
        self.media_cache = Path(config.output_dir) / "media-cache"
        self._iter: Iterator[dict[str, Any]] | None = None
        self._pending: list[list[dict[str, Any]]] = []
        """This rank's raw samples for the rest of the current window, one list per micro batch."""

    def state_dict(self) -> dict[str, int]:
        assert not self._pending, (
            f"stage {self.stage.name}: stream state taken with {len(self._pending)} micro batches of the "
            "window unread; it is saved once per optimizer step"
        )
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)
        self._iter = None
        self._pending = []

    def next_window(self) -> list[dict[str, Any]]:
        """The samples of one optimizer step, for all ranks."""
        if self._iter is None:
            self._iter = iter(self.stream)
        size = self.world_size * self.stage.micro_batch_size * self.stage.grad_accum_steps
        return [next(self._iter) for _ in range(size)]

    def my_examples(self) -> list[examples.Example]:
        """This rank's samples of its next micro batch (a new window after the last micro batch of a step)."""
        if not self._pending:
            window = self.next_window()
            costs = [estimate_cost(sample) for sample in window]
            plan = balance.assign_global_batch(
                costs,
                self.world_size,
                self.stage.micro_batch_size,
                self.stage.grad_accum_steps,
                # ZeRO-2 reduces gradients and ZeRO-3 gathers parameters in every micro batch; ZeRO-1 meets
                # only at the optimizer step.
                meet_every_micro_batch=self.stage.zero_stage >= 2,
            )
            self._pending = [[window[i] for i in micro] for micro in plan[self.rank]]
        return [examples.to_example(sample, self.media_cache) for sample in self._pending.pop(0)]

    def encode(self, conversation: examples.Conversation, sample_id: str, weight: float = 1.0) -> Encoded:
        return Encoded.from_batch(sample_id, self.processor([conversation], sample_ids=[sample_id]), weight)

    def pack(self, encoded: list[Encoded]) -> Packed:
        """Pack encoded samples into rows of the stage's ``seq_len``."""
        return pack(encoded, self.stage.seq_len, self.processor.tokenizer.pad_token_id)


def estimate_cost(sample: dict[str, Any], model: balance.CostModel = balance.CostModel()) -> float:
    """Cheap pre-decode cost estimate of a raw sample (SPEC.md section 5), from sizes alone.

    The LLM term uses the token estimate the sharder stored (``tokens``); the ViT term counts 4 patches
    per visual token: per frame for a video (from its plan), and for an image all of the sample's tokens
    (its text is short next to its visual tokens).
    """
    record = sample_record(sample)
    tokens = int(record.get("tokens", len(sample.get("json", b"")) // 4))
    if "plan.json" in sample:
        patches = [4 * frame["tokens"] for frame in json.loads(sample["plan.json"])["frames"]]
    elif media_of(sample) is not None:
        patches = [4 * tokens]
    else:
        patches = []
    return balance.sample_cost(patches, tokens, model)
