"""Sharding: mix realized within +-1% by tokens, manifest = files, WebDataset reads back, crash-safe writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from data_specs.mixes import DataMix, get_mix, stage3_mix
from keye_model.slow_fast import VideoPlan
from tasks.shards import ShardConfig, count_text_tokens, estimate_samples, sample_mix, shard_stage, write_stage_shards
from tasks.sources import SourceSpec, collect_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    work = tmp_path_factory.mktemp("sources")
    out = []
    for name, limit in (("easy-vqa", 12), ("skimage", 4), ("scene-videos", 2), ("text-instructions", 16)):
        out += collect_records(SourceSpec(name=name, limit=limit, max_side_px=96), work).records
    return out


@pytest.fixture(scope="module")
def stage3(records, tmp_path_factory):
    config = ShardConfig(
        mix="annealing", out_dir=str(tmp_path_factory.mktemp("shards")), slow_fast="tiny", max_records_per_shard=24
    )
    return write_stage_shards.fn(records, stage3_mix(), config)


def test_realized_mix_is_within_one_percent_by_tokens(stage3):
    assert set(stage3.planned) == {"video", "image", "text"}
    for modality, planned in stage3.planned.items():
        assert abs(stage3.realized[modality] - planned) <= 0.01, (modality, stage3.realized)
    by_modality = {}
    for shard in stage3.shards:
        for modality, tokens in shard.modality_tokens.items():
            by_modality[modality] = by_modality.get(modality, 0) + tokens
    assert sum(by_modality.values()) == stage3.total_tokens
    assert abs(by_modality["video"] / stage3.total_tokens - 0.24) <= 0.01


def test_every_record_is_used_and_scarce_ones_repeat(stage3, records):
    assert stage3.num_unique_records == len(records) and stage3.unused_record_ids == []
    keys = [k for s in stage3.shards for k in s.keys]
    assert len(keys) == len(set(keys)) == stage3.num_records > len(records)
    assert all("." not in k for k in keys) and any("__r1" in k for k in keys)


def test_manifest_matches_the_files(stage3):
    manifest = json.loads(Path(stage3.manifest_path).read_text())
    assert manifest["within_tolerance"] and manifest["mix_spec"] == stage3_mix().to_dict()
    assert manifest["mix"] == stage3.mix == "annealing" and stage3.manifest_rows()[0]["mix"] == "annealing"
    assert [s["name"] for s in manifest["shards"]] == [f"annealing-{i:06d}.tar" for i in range(len(stage3.shards))]
    for info, entry in zip(stage3.shards, manifest["shards"]):
        data = Path(info.path).read_bytes()
        assert entry["sha256"] == info.sha256 == hashlib.sha256(data).hexdigest()
        assert entry["num_bytes"] == info.num_bytes == len(data)
        assert entry["record_ids"] == info.record_ids and sum(info.source_counts.values()) == info.num_records
    assert sum(s.num_records for s in stage3.shards) == manifest["num_records"]
    assert not list(Path(stage3.manifest_path).parent.glob(".*"))  # no partial files left


def test_shards_read_back_with_plain_webdataset(stage3, records):
    by_id = {r.id: r for r in records}
    urls = [s.path for s in stage3.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [k for s in stage3.shards for k in s.keys]
    for sample in samples:
        meta = sample["json"]
        record = by_id[meta["id"]]
        assert (meta["question"], meta["answer"]) == (record.question, record.answer)
        text_tokens = count_text_tokens(record.question + "\n" + record.answer)
        if record.modality == "image":
            suffix = Path(record.media_path).suffix.lstrip(".").replace("jpeg", "jpg")
            assert suffix in sample and meta["tokens"] > text_tokens
        elif record.modality == "video":
            plan = VideoPlan.from_dict(sample["plan.json"])
            assert sample["mp4"] == Path(record.media_path).read_bytes()
            assert meta["tokens"] == plan.total_tokens + text_tokens and plan.frames[0].kind == "slow"
        else:
            assert meta["tokens"] == text_tokens and set(sample) - {"__key__", "__url__", "__local_path__"} == {"json"}
    raw_samples = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    image = next(r for r in records if r.source == "skimage")
    assert raw_samples[image.id]["jpg"] == Path(image.media_path).read_bytes()  # encoded bytes, unchanged


def test_our_tar_bytes_equal_webdatasets_own_tarwriter(stage3):
    """Our hand-built headers (kept because they write ~2x faster, benchmarks/bench_shards.py) must
    produce exactly what webdataset's TarWriter writes for the same samples."""
    import io

    shard = stage3.shards[0]
    theirs = io.BytesIO()
    with wds.TarWriter(theirs, encoder=False, mtime=0) as writer:
        for sample in wds.WebDataset([shard.path], shardshuffle=False):
            writer.write({k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")})
    assert Path(shard.path).read_bytes() == theirs.getvalue()


def test_source_ratios_and_a_custom_tokenizer(records, tmp_path):
    mix = DataMix(
        name="split",
        modality_ratios={"image": 0.7, "text": 0.3},
        source_ratios={"image": {"easy-vqa": 0.4, "skimage": 0.6}},
    )
    chars = lambda text: list(text.encode())  # noqa: E731  a "tokenizer" returning one id per byte
    images_and_text = [r for r in records if r.modality != "video"]
    result = shard_stage(images_and_text, mix, ShardConfig(mix="split", out_dir=str(tmp_path)), tokenizer=chars)
    assert result.planned["image/easy-vqa"] == pytest.approx(0.28)
    for name, planned in result.planned.items():
        assert abs(result.realized[name] - planned) <= 0.01, (name, result.realized)
    text = next(r for r in images_and_text if r.modality == "text")
    sample = next(
        s for s in wds.WebDataset([result.shards[0].path], shardshuffle=False).decode() if s["json"]["id"] == text.id
    )
    assert sample["json"]["tokens"] == len((text.question + "\n" + text.answer).encode())


def test_a_planned_modality_without_records_is_an_error(records):
    samples = estimate_samples([r for r in records if r.modality != "video"], ShardConfig(mix="x", out_dir="/tmp"))
    with pytest.raises(ValueError, match="annealing.*no video records"):
        sample_mix(samples, stage3_mix())


def test_a_mix_of_named_tasks_takes_only_those_records(records):
    """``image_captions`` (vision pre-training) samples caption records only; none at all is an error."""
    samples = estimate_samples(records, ShardConfig(mix="x", out_dir="/tmp"))
    chosen = sample_mix(samples, get_mix("image_captions"))
    assert chosen and {s.record.task for s in chosen} == {"caption"}
    assert {s.record.id for s in chosen} == {r.id for r in records if r.task == "caption" and r.modality == "image"}
    without = estimate_samples([r for r in records if r.task != "caption"], ShardConfig(mix="x", out_dir="/tmp"))
    with pytest.raises(ValueError, match=r"image_captions.*no image records of tasks \['caption'\]"):
        sample_mix(without, get_mix("image_captions"))


KILL_SCRIPT = """
import sys, time
from data_specs.mixes import DataMix
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import SourceSpec, collect_records
work = sys.argv[1]
records = collect_records(SourceSpec(name="easy-vqa", limit=40), work).records
records += collect_records(SourceSpec(name="text-instructions", limit=40), work).records
mix = DataMix(name="killed", modality_ratios={"image": 0.5, "text": 0.5})
shard_stage(records, mix, ShardConfig(mix="killed", out_dir=work, max_records_per_shard=5),
            on_sample=lambda key: time.sleep(0.03))
"""


@pytest.mark.slow
def test_sigkill_midway_leaves_no_partial_shard_visible(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], cwd=ROOT)
    stage_dir = tmp_path / "killed"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(stage_dir.glob("killed-*.tar"))) >= 2 and list(stage_dir.glob(".*.partial")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in stage_dir.iterdir() if not p.name.startswith("."))
    assert visible and all(name.startswith("killed-") and name.endswith(".tar") for name in visible)  # no manifest
    for name in visible:  # every visible shard is complete
        assert len(list(wds.WebDataset([str(stage_dir / name)], shardshuffle=False))) == 5
    hidden = [p.name for p in stage_dir.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].endswith(".tar.partial")


def test_a_copied_run_folder_reads_its_own_shards(records, tmp_path):
    """Curate into one run folder, copy it, delete the original: the copy's manifest names the copy's shards."""
    from tasks.layout import RunLayout, read_mix_shards

    original = RunLayout(str(tmp_path / "run"))
    config = ShardConfig(mix="annealing", out_dir=original.shards_dir, slow_fast="tiny", max_records_per_shard=24)
    written = write_stage_shards.fn(records, stage3_mix(), config)
    assert str(tmp_path / "run") not in Path(written.manifest_path).read_text()  # nothing absolute inside
    shutil.copytree(original.root, tmp_path / "copy")
    shutil.rmtree(original.root)

    copy = read_mix_shards(RunLayout(str(tmp_path / "copy")).shards_dir, "annealing")
    assert [Path(p).name for p in copy.paths] == [s.name for s in written.shards]
    for path, sha256, num_bytes in zip(copy.paths, copy.sha256s, copy.num_bytes):
        assert Path(path).parent == (tmp_path / "copy" / "shards" / "annealing").resolve()
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == num_bytes


def test_a_manifest_path_that_leaves_its_folder_is_refused(stage3, tmp_path):
    from tasks.layout import read_mix_shards

    folder = tmp_path / "annealing"
    folder.mkdir()
    manifest = json.loads(Path(stage3.manifest_path).read_text())
    manifest["shards"][0]["path"] = "../elsewhere/annealing-000000.tar"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a file beside the manifest"):
        read_mix_shards(str(tmp_path), "annealing")
