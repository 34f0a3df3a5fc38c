"""Shards damaged after curation (truncated, bit-flipped, resized) are refused when a stage starts, with an
error naming the shard: checked against the manifest the sharder wrote, before any sample is read."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from data_specs.mixes import DataMix
from keye_model.training.loader import ShardError, ShardStream, read_shard
from tasks.layout import read_mix_shards
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import SourceSpec, collect_records


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A mix of real images and text, sharded by the pipeline's sharder (manifest included)."""
    work = tmp_path_factory.mktemp("curated")
    records = (
        collect_records(SourceSpec(name="easy-vqa", limit=8), work).records
        + collect_records(SourceSpec(name="text-instructions", limit=8), work).records
    )
    mix = DataMix(name="reliable", modality_ratios={"image": 0.5, "text": 0.5}, tolerance=0.25)
    shard_stage(
        records,
        mix,
        ShardConfig(mix="reliable", out_dir=str(work / "shards"), slow_fast="tiny", max_records_per_shard=4),
    )
    return work / "shards"


@pytest.fixture
def shards(curated, tmp_path):
    """A fresh copy of the curated shards (each test damages one) and the manifest's view of them."""
    shards_dir = tmp_path / "shards"
    shutil.copytree(curated, shards_dir)
    mix = read_mix_shards(str(shards_dir), "reliable")
    assert len(mix.paths) >= 3
    return mix


def start_stage(mix) -> ShardStream:
    """What a stage does first: open its shard stream with the manifest's sha256s and sizes."""
    return ShardStream(mix.paths, sha256s=mix.sha256s, num_bytes=mix.num_bytes)


def test_intact_shards_start(shards):
    stream = iter(start_stage(shards))
    assert next(stream)["__key__"]


def test_a_truncated_shard_is_refused(shards):
    victim = shards.paths[1]
    with tarfile.open(victim) as tar:
        cut = tar.getmembers()[2].offset  # at a header boundary: a shorter tar that still opens
    with open(victim, "r+b") as handle:
        handle.truncate(cut)
    with pytest.raises(
        ShardError, match=f"1 of {len(shards.paths)} shards do not match their manifest.*{victim}: {cut} bytes"
    ):
        start_stage(shards)


def test_flipped_bytes_are_refused(shards):
    victim = shards.paths[0]
    with tarfile.open(victim) as tar:
        media = next(m for m in tar.getmembers() if not m.name.endswith("json"))
    with open(victim, "r+b") as handle:
        handle.seek(media.offset_data + 10)
        byte = handle.read(1)
        handle.seek(media.offset_data + 10)
        handle.write(bytes([byte[0] ^ 0x01]))  # one bit of an image
    assert len(list(read_shard(victim))) > 0  # still a readable tar: only the hash tells
    with pytest.raises(ShardError, match=f"{victim}: sha256 .* \\(corrupted\\)"):
        start_stage(shards)


def test_a_size_mismatch_is_refused(shards):
    victim = shards.paths[-1]
    with open(victim, "ab") as handle:
        handle.write(b"appended")
    with pytest.raises(
        ShardError, match=f"{victim}: {shards.num_bytes[-1] + 8} bytes, its manifest says {shards.num_bytes[-1]}"
    ):
        start_stage(shards)
