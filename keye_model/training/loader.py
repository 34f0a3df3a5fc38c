"""Training data: a deterministic, resumable sample stream over WebDataset shards, balanced packing.

Order. Every rank walks the same global order: in epoch e the shards are permuted by
Random(seed + e) and read front to back. The stream's state is (epoch, shard_cursor, offset); saved
with each checkpoint, it lets a resumed run continue at exactly the next sample (none seen twice, none
skipped). Shard reading yields raw bytes only, so walking the order is cheap; the heavy work (image
decode, video frames from the pre-computed Slow-Fast plan) happens only for a rank's own samples.

Balance. The stream is cut into windows of one optimizer step, ``world_size * micro_batch_size *
grad_accum_steps`` samples; each window's samples are assigned to ranks and micro batches by estimated
cost (``balance.assign_global_batch``, used by ``batches.py``), every rank computing the same
assignment, so no communication is needed. A rank packs each micro batch's share: samples are
concatenated with position ids restarting at 0, which transformers turns into a block-causal mask (no
attention across samples).

Worked example (2 ranks, micro batch 2, no accumulation): the window [a(cost 9), b(2), c(5), d(4)] goes
a -> rank 0, c -> rank 1, d -> rank 1 (load 9), b -> rank 0 (load 11): rank 0 packs {a, b}, rank 1
packs {c, d}.

Trust. Shards are checked against their manifest (size, then sha256) when a stage starts, before any is
read: a truncated or bit-flipped shard would otherwise train on partial or garbled data without a word
(a tar cut at a header boundary reads as a shorter, valid tar). Every read error names the shard and
the sample (``ShardError``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


class ShardError(ValueError):
    """A shard that does not match its manifest or cannot be read; the message names the shard (and sample)."""


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(paths: Sequence[str | Path], sha256s: Sequence[str], num_bytes: Sequence[int]) -> None:
    """Check each shard against its manifest entry: size first (a stat), then sha256 (a full read).

    Raises ShardError naming every shard that is missing, of the wrong size or of the wrong hash.
    """
    if not len(paths) == len(sha256s) == len(num_bytes):
        raise ValueError(f"{len(paths)} shards but {len(sha256s)} sha256s and {len(num_bytes)} sizes")
    bad = []
    for path, expected_sha, expected_bytes in zip(paths, sha256s, num_bytes):
        if not Path(path).is_file():
            bad.append(f"{path}: missing")
            continue
        size = Path(path).stat().st_size
        if size != expected_bytes:
            bad.append(f"{path}: {size} bytes, its manifest says {expected_bytes} (truncated or overwritten)")
            continue
        digest = sha256_of(path)
        if digest != expected_sha:
            bad.append(f"{path}: sha256 {digest}, its manifest says {expected_sha} (corrupted)")
    if bad:
        raise ShardError(
            f"{len(bad)} of {len(paths)} shards do not match their manifest; run curation again "
            f"to rewrite them: " + "; ".join(bad)
        )
    log.info("%d shards match their manifest (size and sha256)", len(paths))


def read_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Samples of one WebDataset tar, as webdataset groups them: files sharing a key up to its first dot.

    Reading the tar directly (not through webdataset's pipeline) keeps the position exact for resume.
    ``tarfile`` stops without an error at a damaged header after the first one, or where a truncated file
    ends between members; so after the last member the rest of the file must be the end-of-archive zero
    blocks, or ShardError. Every error names the shard and the sample being read.
    """
    current: dict[str, Any] | None = None
    where = "its first sample"
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                key, _, ext = name.partition(".")
                where = f"sample {key} (member {member.name})"
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": str(path)}
                current[ext] = data
            end = tar.offset
            raw.seek(end)
            tail = raw.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardError(f"shard {path}: cannot read {where}: {type(exc).__name__}: {exc}") from exc
    if not tail:
        raise ShardError(
            f"shard {path} ends at byte {end}, after {where}, without the end-of-archive blocks (truncated)"
        )
    if tail.strip(b"\0"):
        raise ShardError(f"shard {path}: unreadable tar header at byte {end}, after {where} (corrupt or truncated)")
    if current is not None:
        yield current


def sample_name(sample: dict[str, Any]) -> str:
    """``sample <key> of shard <path>``: how errors about a sample name it."""
    return f"sample {sample.get('__key__')} of shard {sample.get('__shard__')}"


class ShardStream:
    """Endless, resumable stream of raw samples over ``shards`` (every rank sees the same order).

    With ``sha256s`` and ``num_bytes`` (from the shards' manifest) every shard is verified once, here, when
    the stage starts; without them the shards are read unverified, which is logged.
    """

    def __init__(
        self, shards: Sequence[str | Path], seed: int = 0, sha256s: Sequence[str] = (), num_bytes: Sequence[int] = ()
    ) -> None:
        if not shards:
            raise ValueError("the stage has no shards to read")
        missing = [str(s) for s in shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"shards not found: {missing[:5]}")
        if sha256s or num_bytes:
            verify_shards(shards, sha256s, num_bytes)
        else:
            log.warning("%d shards read without a manifest check (no sha256s given)", len(shards))
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
        raise ShardError(f"{sample_name(sample)} has no valid json: {type(exc).__name__}: {exc}") from exc


def media_of(sample: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """(kind, ext, bytes) of the sample's image or video, or None for text."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return "image", ext, sample[ext]
    for ext in VIDEO_EXTS:
        if ext in sample:
            return "video", ext, sample[ext]
    return None


def open_image(data: bytes, where: str):
    """The decoded RGB image; ShardError naming ``where`` (``sample_name``) when the bytes do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL's decode errors
        raise ShardError(f"{where}: image does not decode: {type(exc).__name__}: {exc}") from exc
