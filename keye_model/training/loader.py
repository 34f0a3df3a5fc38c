"""Training data: a deterministic, resumable sample stream over WebDataset shards, balanced packing.

Order. Every rank walks the same global order: in epoch e the shards are permuted by
Random(seed + e) and read front to back. The stream's state is (epoch, shard_cursor, offset); saved
with each checkpoint, it lets a resumed run continue at exactly the next sample (none seen twice, none
skipped). Shard reading yields raw bytes only, so walking the order is cheap; the heavy work (image
decode, video frames from the pre-computed Slow-Fast plan) happens only for a rank's own samples.

Balance. The stream is cut into windows of ``world_size * micro_batch_size`` samples; each window's
samples are assigned to ranks longest-first by estimated cost (``balance.py``), every rank computing the
same assignment, so no communication is needed. A rank packs its share into one sequence per micro
batch slot: samples are concatenated with position ids restarting at 0, which transformers turns into a
block-causal mask (no attention across samples).

Worked example (2 ranks, micro batch 2): the window [a(cost 9), b(2), c(5), d(4)] goes a -> rank 0,
c -> rank 1, d -> rank 1 (load 9), b -> rank 0 (load 11): rank 0 packs {a, b}, rank 1 packs {c, d}.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from keye_model.training import balance

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "tiff", "bmp", "gif")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")


@dataclass
class StreamState:
    """Where the stream stands: the next sample is sample ``offset`` of shard ``order[shard_cursor]``."""

    epoch: int = 0
    shard_cursor: int = 0
    offset: int = 0
    samples_seen: int = 0


def read_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Samples of one WebDataset tar, as webdataset groups them: files sharing a key up to its first dot.

    Reading the tar directly (not through webdataset's pipeline) keeps the position exact for resume.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name).name
            key, _, ext = name.partition(".")
            data = tar.extractfile(member).read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__shard__": str(path)}
            current[ext] = data
    if current is not None:
        yield current


class ShardStream:
    """Endless, resumable stream of raw samples over ``shards`` (every rank sees the same order)."""

    def __init__(self, shards: Sequence[str | Path], seed: int = 0) -> None:
        if not shards:
            raise ValueError("the stage has no shards to read")
        missing = [str(s) for s in shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"shards not found: {missing[:5]}")
        self.shards = [str(s) for s in shards]
        self.seed = seed
        self.state = StreamState()

    def order(self, epoch: int) -> list[str]:
        shards = sorted(self.shards)
        random.Random(self.seed + epoch).shuffle(shards)
        return shards

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            order = self.order(self.state.epoch)
            while self.state.shard_cursor < len(order):
                shard = order[self.state.shard_cursor]
                for index, sample in enumerate(read_shard(shard)):
                    if index < self.state.offset:
                        continue
                    self.state.offset = index + 1
                    self.state.samples_seen += 1
                    yield sample
                self.state.shard_cursor += 1
                self.state.offset = 0
            if self.state.samples_seen == 0:
                raise ValueError(f"shards hold no samples: {self.shards[:5]}")
            self.state.epoch += 1
            self.state.shard_cursor = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = StreamState(**state)


def sample_record(sample: dict[str, Any]) -> dict[str, Any]:
    """The record JSON of a shard sample (``<key>.json``); names the sample on failure."""
    try:
        return json.loads(sample["json"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__shard__')} has no valid json: {exc}") from exc


def media_of(sample: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """(kind, ext, bytes) of the sample's image or video, or None for text."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return "image", ext, sample[ext]
    for ext in VIDEO_EXTS:
        if ext in sample:
            return "video", ext, sample[ext]
    return None


def assign_window(costs: Sequence[float], world_size: int, rank: int) -> list[int]:
    """Indices of a window's samples that ``rank`` trains on (longest-first onto the least-loaded rank)."""
    return sorted(balance.assign_longest_first(costs, world_size)[rank])


def open_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
