"""Sequence packing: several encoded samples in one row, with no attention across them.

Samples are placed in rows of at most ``seq_len`` tokens, first fit in arrival order. Position ids
restart at 0 for every sample; transformers (attention_mask=None, position_ids given) then builds a
block-causal mask from them, so a token attends only to earlier tokens of its own sample; with M-RoPE the
model derives each sample's t/h/w positions from these restarts (keye_model.mrope). The label of
each sample's first token is masked because the causal loss would otherwise make the previous sample's
last token predict it.

Worked example, seq_len 8, samples of lengths 5, 2 and 4. Rows are as wide as the fullest row (7),
not seq_len: row 0 = [s0 s0 s0 s0 s0 s1 s1] with position ids [0 1 2 3 4 0 1]; row 1 =
[s2 s2 s2 s2 pad pad pad] with [0 1 2 3 0 1 2]. Packing efficiency = 11 real tokens / 14 slots = 0.79.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from keye_model.losses import IGNORE_INDEX

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """One sample after the processor: a single unpadded row and its visual inputs."""

    sample_id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    grid_hw: torch.Tensor
    weight: float = 1.0

    @classmethod
    def from_batch(cls, sample_id: str, batch: dict[str, torch.Tensor], weight: float = 1.0) -> Encoded:
        """Take row 0 of a processor batch of one, dropping right padding."""
        n = int(batch["attention_mask"][0].sum())
        return cls(
            sample_id,
            batch["input_ids"][0, :n],
            batch["labels"][0, :n],
            batch["pixel_values"],
            batch["grid_hw"],
            weight,
        )

    def __len__(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class Packed:
    """A micro batch of packed rows, ready for ``model(**packed.model_inputs())``."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: torch.Tensor
    grid_hw: torch.Tensor
    token_weights: torch.Tensor
    """Per label position w_i / n_i (n_i = sample i's response tokens); sums to sum_i w_i."""
    num_real_tokens: int
    """Tokens that belong to samples (the rest is padding)."""
    sample_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        """Real tokens / row slots."""
        return self.num_real_tokens / self.input_ids.numel()

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
            "pixel_values": self.pixel_values,
            "grid_hw": self.grid_hw,
        }


def pack(samples: list[Encoded], seq_len: int, pad_id: int) -> Packed:
    """Pack ``samples`` into rows of ``seq_len``; a sample longer than that is skipped and named."""
    rows: list[list[Encoded]] = []
    fill: list[int] = []
    skipped = []
    for sample in samples:
        if len(sample) > seq_len:
            log.warning(
                "sample %s has %d tokens, more than the stage's seq_len %d: skipped",
                sample.sample_id,
                len(sample),
                seq_len,
            )
            skipped.append(sample.sample_id)
            continue
        for i, used in enumerate(fill):
            if used + len(sample) <= seq_len:
                rows[i].append(sample)
                fill[i] += len(sample)
                break
        else:
            rows.append([sample])
            fill.append(len(sample))
    if not rows:
        raise ValueError(f"no sample fits in seq_len {seq_len}: {skipped}")
    width = max(fill)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    token_weights = torch.zeros((len(rows), width), dtype=torch.float32)
    pixels, grids, ids = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for sample in row:
            end = start + len(sample)
            input_ids[r, start:end] = sample.input_ids
            labels[r, start:end] = sample.labels
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start:end] = torch.arange(len(sample))
            # Loss positions are the shifted ones: label t is predicted at t - 1.
            counted = labels[r, start + 1 : end] != IGNORE_INDEX
            num = int(counted.sum())
            if num:
                token_weights[r, start + 1 : end][counted] = sample.weight / num
            pixels.append(sample.pixel_values)
            grids.append(sample.grid_hw)
            ids.append(sample.sample_id)
            start = end
        # Padding is one more "sample" with its own positions, so it attends to nothing real.
        position_ids[r, start:] = torch.arange(width - start)
    return Packed(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        pixel_values=torch.cat(pixels),
        grid_hw=torch.cat(grids).reshape(-1, 2),
        token_weights=token_weights,
        num_real_tokens=sum(fill),
        sample_ids=ids,
        skipped=skipped,
    )
