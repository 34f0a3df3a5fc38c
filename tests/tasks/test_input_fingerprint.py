"""A finished stage is skipped when its inputs' CONTENT is unchanged: shards or an upstream checkpoint
written again with the same bytes (new modification times) keep the fingerprint; other bytes change it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data_specs.presets import stages
from keye_model.training.run_config import RunConfig
from tasks.train import input_fingerprint


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(tmp_path: Path, shards: list[Path], *, with_hashes: bool, init: Path | None = None) -> RunConfig:
    spec = stages("tiny")[1]
    return RunConfig(
        stage=spec,
        output_dir=str(tmp_path / "stages" / spec.name),
        tokenizer_dir=str(tmp_path / "tokenizer"),
        init_checkpoint=str(init) if init else None,
        shards=tuple(str(s) for s in shards),
        shard_sha256s=tuple(_sha256(s) for s in shards) if with_hashes else (),
        shard_num_bytes=tuple(s.stat().st_size for s in shards) if with_hashes else (),
    )


def _touch_later(path: Path) -> None:
    """The same bytes written again, one minute later."""
    path.write_bytes(path.read_bytes())
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns + 60 * 10**9, stat.st_mtime_ns + 60 * 10**9))


def test_shards_rewritten_with_the_same_bytes_keep_the_fingerprint(tmp_path):
    shards = [tmp_path / "a-000000.tar", tmp_path / "a-000001.tar"]
    for i, shard in enumerate(shards):
        shard.write_bytes(bytes([i]) * 1000)
    for with_hashes in (True, False):  # from the manifest, or hashed by the check itself
        before = input_fingerprint(_config(tmp_path, shards, with_hashes=with_hashes))
        _touch_later(shards[0])
        assert input_fingerprint(_config(tmp_path, shards, with_hashes=with_hashes)) == before, with_hashes
        shards[0].write_bytes(b"\x07" * 1000)  # same size, other bytes
        assert input_fingerprint(_config(tmp_path, shards, with_hashes=with_hashes)) != before, with_hashes
        shards[0].write_bytes(b"\x00" * 1000)


def test_an_upstream_checkpoint_counts_by_its_weights(tmp_path):
    shard = tmp_path / "a-000000.tar"
    shard.write_bytes(b"x" * 100)
    checkpoint = tmp_path / "stages" / "stage1" / "checkpoint"
    checkpoint.mkdir(parents=True)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"weights-1")
    result = checkpoint.parent / "result.json"
    result.write_text(json.dumps({"stage": "stage1", "wall_s": 12.5}))
    unrecorded = input_fingerprint(_config(tmp_path, [shard], with_hashes=True, init=checkpoint))
    # checkpoint_artifact records the weights' hash in result.json later: the same fingerprint
    result.write_text(json.dumps({"stage": "stage1", "wall_s": 12.5, "weights_sha256": _sha256(weights)}))
    assert input_fingerprint(_config(tmp_path, [shard], with_hashes=True, init=checkpoint)) == unrecorded
    # retrained to the same weights in another wall time: still the same
    result.write_text(json.dumps({"stage": "stage1", "wall_s": 99.0, "weights_sha256": _sha256(weights)}))
    assert input_fingerprint(_config(tmp_path, [shard], with_hashes=True, init=checkpoint)) == unrecorded
    # other weights: another fingerprint
    weights.write_bytes(b"weights-2")
    result.write_text(json.dumps({"stage": "stage1", "wall_s": 99.0, "weights_sha256": _sha256(weights)}))
    assert input_fingerprint(_config(tmp_path, [shard], with_hashes=True, init=checkpoint)) != unrecorded
