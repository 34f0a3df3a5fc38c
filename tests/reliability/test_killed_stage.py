"""A stage SIGKILLed at several points and rerun: nothing repeated, skipped, partial or duplicated.

Each kill lands where a file first appears, while the process works on: during training (a step's log
line), during a DeepSpeed save (the tag folder, before its manifest and ``latest``), during the final
HF save (``checkpoint/``), and after the stage finished, during its lineage write (``result.json``).
The rerun goes through the same pipeline functions (``train_stage`` then ``record_stage_lineage``) and
must end equal to a run that was never killed: the same samples per step, one log line per step, the
same token count and final loss, the same weights, no partial file, and lineage rows written once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_specs.mixes import DataMix
from data_specs.presets import get_stage
from keye_model.model import KeyeForConditionalGeneration
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training.run_config import RunConfig
from tasks.layout import read_mix_shards
from tasks.lineage import Artifact, LineageStore
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import SourceSpec, collect_records
from tasks.train import record_stage_lineage, train_stage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
PIPELINE = """
import sys
from keye_model.training.run_config import RunConfig
from tasks.train import record_stage_lineage, train_stage
config = RunConfig.from_json(open(sys.argv[1]).read())
record_stage_lineage(sys.argv[2], train_stage(config), "run-killed", sys.argv[3:])
"""
#: Where each kill lands: the first appearance of this path under the stage folder.
KILL_POINTS = {
    "training": "samples.jsonl",
    "deepspeed save": "deepspeed/step4",
    "final save": "checkpoint",
    "lineage write": "result.json",
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    work = tmp_path_factory.mktemp("killed")
    records = (
        collect_records(SourceSpec(name="easy-vqa", limit=8), work).records
        + collect_records(SourceSpec(name="text-instructions", limit=8), work).records
    )
    mix = DataMix(name="sft", modality_ratios={"image": 0.5, "text": 0.5}, tolerance=0.25)
    shard_stage(records, mix, ShardConfig(mix="sft", out_dir=str(work / "shards"), slow_fast="tiny"))
    tiny_tokenizer(work / "tokenizer")
    return work


def stage_config(curated: Path, out: Path) -> RunConfig:
    data = read_mix_shards(str(curated / "shards"), "sft")
    return RunConfig(
        stage=dataclasses.replace(get_stage("tiny", "sft"), num_steps=STEPS, checkpoint_every=2),
        output_dir=str(out),
        tokenizer_dir=str(curated / "tokenizer"),
        shards=data.paths,
        shard_sha256s=data.sha256s,
        shard_num_bytes=data.num_bytes,
        seed=5,
    )


def shard_artifact(config: RunConfig) -> Artifact:
    return Artifact(kind="shard", uri=config.shards[0], sha256=config.shard_sha256s[0])


def finish(config: RunConfig, db: Path) -> None:
    """The rerun: the pipeline's own functions, in this process."""
    with LineageStore(db) as store:
        store.record_artifacts([shard_artifact(config)])
    record_stage_lineage(str(db), train_stage(config), "run-rerun", [shard_artifact(config).artifact_id])


@pytest.fixture(scope="module")
def reference(curated):
    config = stage_config(curated, curated / "reference" / "stages" / "sft")
    finish(config, curated / "reference" / "lineage.duckdb")
    return config


def killed_at(config: RunConfig, db: Path, marker: Path) -> None:
    Path(config.output_dir).mkdir(parents=True)
    path = Path(config.output_dir).parent / "run_config.json"
    path.write_text(config.to_json())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.Popen(
        [sys.executable, "-c", PIPELINE, str(path), str(db), shard_artifact(config).artifact_id],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not marker.exists():
        assert proc.poll() is None, f"finished before {marker} appeared: {proc.stderr.read()[-3000:]}"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_stage_killed_and_rerun_ends_as_if_never_killed(curated, reference, tmp_path, point):
    config = stage_config(curated, tmp_path / "stages" / "sft")
    db = tmp_path / "lineage.duckdb"
    with LineageStore(db) as store:
        store.record_artifacts([shard_artifact(config)])
    out = Path(config.output_dir)
    killed_at(config, db, out / KILL_POINTS[point])
    finish(config, db)

    ref = Path(reference.output_dir)
    assert lines(out / "samples.jsonl") == lines(ref / "samples.jsonl")  # nothing repeated or skipped
    assert [m["step"] for m in lines(out / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert lines(out / "metrics.jsonl") == lines(ref / "metrics.jsonl")  # same losses and token counts
    result, expected = json.loads((out / "result.json").read_text()), json.loads((ref / "result.json").read_text())
    for key in ("steps", "samples_seen", "tokens_seen", "final_loss", "weights_sha256"):
        assert result[key] == expected[key], key
    a = KeyeForConditionalGeneration.from_pretrained(out / "checkpoint").state_dict()
    b = KeyeForConditionalGeneration.from_pretrained(ref / "checkpoint").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    with LineageStore(db, read_only=True) as store:
        assert {t: store.count(t) for t in ("artifacts", "edges")} == {"artifacts": 2, "edges": 1}
        assert store.count("metrics") == sum(
            1
            for row in lines(ref / "metrics.jsonl")
            for k, v in row.items()
            if k not in ("stage", "step") and isinstance(v, (int, float))
        )
