"""Corrupt shards: refused against their manifest before a stage reads them; every read error names the
shard and the sample."""

from __future__ import annotations

import hashlib
import shutil
import tarfile

import pytest

from data_specs.presets import get_stage
from keye_model.processor import KeyeProcessor
from keye_model.tokenizer import load_tokenizer
from keye_model.training import examples
from keye_model.training.batches import Batches, estimate_cost
from keye_model.training.loader import ShardError, ShardStream, read_shard, sample_record, verify_shards
from keye_model.training.run_config import RunConfig


def manifest_of(paths) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(sha256s, sizes) as the sharder's manifest records them."""
    return (
        tuple(hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths),
        tuple(len(open(p, "rb").read()) for p in paths),
    )


@pytest.fixture
def copy(shards, tmp_path):
    """Fresh copies of the two session shards (tests damage them) and their manifest entries."""
    paths = tuple(str(shutil.copy(p, tmp_path)) for p in shards)
    return paths, *manifest_of(paths)


def member_offsets(path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_good_shards_pass_and_stream_in_full(copy):
    paths, sha256s, sizes = copy
    verify_shards(paths, sha256s, sizes)
    stream = iter(ShardStream(paths, sha256s=sha256s, num_bytes=sizes))
    assert len({next(stream)["__key__"] for _ in range(24)}) == 24


def test_a_shard_truncated_at_a_header_boundary_is_refused(copy):
    paths, sha256s, sizes = copy
    members = member_offsets(paths[0])
    assert members[6].name == "s0-003.png"  # cut between a sample's json and its image: before the fix a
    cut = members[6].offset  # valid, shorter tar whose sample s0-003 trained as text, with rc 0
    with open(paths[0], "r+b") as handle:
        handle.truncate(cut)
    with pytest.raises(ShardError, match=f"{paths[0]}: {cut} bytes, its manifest says {sizes[0]}"):
        verify_shards(paths, sha256s, sizes)
    with pytest.raises(ShardError, match="shards do not match their manifest"):
        ShardStream(paths, sha256s=sha256s, num_bytes=sizes)  # where a stage starts: before any sample
    # Read without a manifest, the shard still does not pass for a shorter one.
    with pytest.raises(
        ShardError,
        match=rf"shard {paths[0]} ends at byte {cut}, after sample s0-003 "
        r"\(member s0-003.json\).*truncated",
    ):
        list(read_shard(paths[0]))


def test_flipped_bytes_in_an_image_are_refused_by_their_hash(copy):
    paths, sha256s, sizes = copy
    png = next(m for m in member_offsets(paths[1]) if m.name.endswith(".png"))
    with open(paths[1], "r+b") as handle:
        handle.seek(png.offset_data + png.size // 2)
        data = handle.read(16)
        handle.seek(png.offset_data + png.size // 2)
        handle.write(bytes(b ^ 0xFF for b in data))
    assert len(list(read_shard(paths[1]))) == 12  # the tar itself reads fine: only the hash can tell
    with pytest.raises(
        ShardError,
        match=rf"1 of 2 shards.*{paths[1]}: sha256 [0-9a-f]{{64}}, its manifest says "
        rf"{sha256s[1]} \(corrupted\)",
    ):
        verify_shards(paths, sha256s, sizes)


def test_a_size_mismatch_is_refused_without_hashing(copy):
    paths, sha256s, sizes = copy
    with open(paths[0], "ab") as handle:
        handle.write(b"\0" * 512)
    with pytest.raises(ShardError, match=f"{paths[0]}: {sizes[0] + 512} bytes, its manifest says {sizes[0]}"):
        verify_shards(paths, sha256s, sizes)
    with pytest.raises(ValueError, match="2 shards but 1 sha256s"):
        verify_shards(paths, sha256s[:1], sizes[:1])


def test_read_errors_name_the_shard_and_the_sample(copy, tmp_path):
    paths, _, _ = copy
    members = member_offsets(paths[0])
    # A damaged header after the first: tarfile stops there silently; we must not.
    with open(paths[0], "r+b") as handle:
        handle.seek(members[4].offset + 100)  # the mode field of a header: its checksum no longer matches
        handle.write(b"garbage!")
    with pytest.raises(
        ShardError,
        match=rf"shard {paths[0]}: unreadable tar header at byte {members[4].offset}, "
        r"after sample s0-001",
    ):
        list(read_shard(paths[0]))
    # Cut inside a file's data: the error names the sample being read.
    png = next(m for m in member_offsets(paths[1]) if m.name.endswith(".png") and m.offset > 0)
    with open(paths[1], "r+b") as handle:
        handle.truncate(png.offset_data + png.size // 2)
    key = png.name.split(".")[0]
    with pytest.raises(ShardError, match=rf"shard {paths[1]}: cannot read sample {key} \(member {png.name}\)"):
        list(read_shard(paths[1]))


def test_undecodable_image_and_json_name_the_shard_and_sample(shards, tmp_path):
    sample = next(s for s in read_shard(shards[0]) if "png" in s)
    garbled = {**sample, "png": sample["png"][:40] + bytes(200)}
    with pytest.raises(ShardError, match=rf"sample {sample['__key__']} of shard {shards[0]}: image does not decode"):
        examples.to_example(garbled, tmp_path)
    bad_json = {**sample, "json": b'{"question": "cut'}
    with pytest.raises(ShardError, match=rf"sample {sample['__key__']} of shard {shards[0]} has no valid json"):
        sample_record(bad_json)
    with pytest.raises(ShardError, match=rf"sample {sample['__key__']} of shard {shards[0]}"):
        estimate_cost(bad_json)  # balancing reads the json before any example is built


def test_a_stage_refuses_shards_that_differ_from_its_run_config(copy, tokenizer_dir, tmp_path):
    paths, sha256s, sizes = copy
    config = RunConfig(
        stage=get_stage("tiny", "stage1"),
        output_dir=str(tmp_path),
        tokenizer_dir=tokenizer_dir,
        shards=paths,
        shard_sha256s=sha256s,
        shard_num_bytes=sizes,
    )
    assert RunConfig.from_json(config.to_json()) == config  # what every rank reads
    processor = KeyeProcessor(load_tokenizer(tokenizer_dir))
    assert Batches(config, processor, 0, 1).stream.shards == list(paths)
    with open(paths[1], "r+b") as handle:
        handle.seek(600)
        handle.write(b"x")
    with pytest.raises(ShardError, match=f"{paths[1]}: sha256"):
        Batches(config, processor, 0, 1)
