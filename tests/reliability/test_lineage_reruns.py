"""Lineage across retrains, reruns, readers and killed runs (issue 11 items 7, 8, 9), on real DuckDB files.

A stage's checkpoint here is a real folder as ``tasks.train`` leaves it: ``checkpoint/model.safetensors``
(tiny real tensors), ``result.json`` and ``metrics.jsonl`` beside it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from keye_model.training.run_config import StageResult
from tasks.evaluation.report import record_eval_metrics
from tasks.lineage import Artifact, LineageStore, Run
from tasks.lineage.prefect_tasks import close_dead_runs
from tasks.train import record_stage_lineage

ROOT = Path(__file__).resolve().parents[2]
SHARD = Artifact(kind="shard", uri="file:///runs/r/shards/sft/sft-000000.tar", sha256="e" * 64)


def train(stage_dir: Path, value: float, steps: int = 4) -> StageResult:
    """Leave the files of a finished stage whose weights are ``value`` everywhere."""
    checkpoint = stage_dir / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((4, 4), value)}, str(checkpoint / "model.safetensors"))
    result = StageResult("sft", str(checkpoint), steps, 2 * steps, 10 * steps, value, 1.0)
    (stage_dir / "result.json").write_text(json.dumps(result.to_dict()))
    rows = [{"stage": "sft", "step": s, "loss": value / s, "lr": 1e-3, "tokens": 10 * s} for s in range(1, steps + 1)]
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return result


def rows(db: Path, table: str) -> int:
    with LineageStore(db, read_only=True) as store:
        return store.count(table)


def test_a_rerun_of_a_finished_stage_adds_no_metrics_or_edges(tmp_path):
    db = tmp_path / "lineage.duckdb"
    result = train(tmp_path / "stages" / "sft", 0.5)
    with LineageStore(db) as store:
        store.record_artifacts([SHARD])
    first = record_stage_lineage(str(db), result, "run-1", [SHARD.artifact_id])
    counts = {t: rows(db, t) for t in ("artifacts", "edges", "metrics")}
    assert counts == {"artifacts": 2, "edges": 1, "metrics": 12}  # 4 steps x (loss, lr, tokens)
    again = record_stage_lineage(str(db), result, "run-2", [SHARD.artifact_id])  # the rerun skipped the stage
    assert again == first and {t: rows(db, t) for t in counts} == counts


def test_a_retrained_stage_resolves_to_its_current_checkpoint(tmp_path):
    """Evaluation and ``keye lineage ancestors <path>`` after the stage was trained twice in one run folder."""
    db = tmp_path / "lineage.duckdb"
    stage_dir = tmp_path / "stages" / "sft"
    with LineageStore(db) as store:
        store.record_artifacts([SHARD])
    old = record_stage_lineage(str(db), train(stage_dir, 0.5), "run-1", [SHARD.artifact_id])
    new = record_stage_lineage(str(db), train(stage_dir, 0.25), "run-2", [SHARD.artifact_id])
    assert old != new
    checkpoint = str(stage_dir / "checkpoint")
    with LineageStore(db) as store:
        assert store.resolve(checkpoint) == new
        assert [n.artifact_id for n in store.ancestors(checkpoint)] == [SHARD.artifact_id]
        evaluation = record_eval_metrics(store, "run-3", "sft", checkpoint, {"vqa/accuracy": 0.5})
        assert evaluation.metadata["checkpoint_id"] == new
    # Retrained back to the first weights: the hash in result.json names the old row, not the newest.
    assert record_stage_lineage(str(db), train(stage_dir, 0.5), "run-4", [SHARD.artifact_id]) == old
    with LineageStore(db, read_only=True) as store:
        assert store.resolve(checkpoint) == old


HOLDER = """
import sys
from tasks.lineage import LineageStore
with LineageStore(sys.argv[1], read_only=True) as store:
    print("ready", flush=True)
    sys.stdin.readline()
"""


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.slow
def test_a_reader_holding_the_file_does_not_fail_the_stage(tmp_path):
    """A ``keye lineage`` query open while the stage records its lineage: the writer waits, then writes."""
    db = tmp_path / "lineage.duckdb"
    with LineageStore(db) as store:
        store.record_artifacts([SHARD])
    result = train(tmp_path / "stages" / "sft", 0.5)
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seen = _Seen("retrying")
    logging.getLogger("tasks.lineage.store").addHandler(seen)

    def release_after_the_writer_waited() -> None:
        seen.event.wait(timeout=300)
        reader.stdin.write("done\n")
        reader.stdin.flush()

    releaser = threading.Thread(target=release_after_the_writer_waited)
    try:
        assert reader.stdout.readline().strip() == "ready"
        releaser.start()
        checkpoint_id = record_stage_lineage(str(db), result, "run-1", [SHARD.artifact_id])
    finally:
        logging.getLogger("tasks.lineage.store").removeHandler(seen)
        releaser.join(timeout=300)
        reader.wait(timeout=60)
    assert seen.event.is_set()  # it did find the file locked
    with LineageStore(db, read_only=True) as store:
        assert store.has_artifact(checkpoint_id) and store.count("metrics") == 12


def test_a_killed_run_is_recorded_crashed_when_the_next_run_starts(tmp_path):
    db = tmp_path / "lineage.duckdb"
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # its PID now names no process
    here = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        with LineageStore(db) as store:
            store.record_runs(
                [
                    Run(run_id="dead", flow_name="keye", host=here, pid=killed.pid),
                    Run(run_id="alive", flow_name="keye", host=here, pid=alive.pid),
                    Run(run_id="elsewhere", flow_name="keye", host="another-host", pid=killed.pid),
                    Run(run_id="parent", flow_name="keye", host=here, pid=os.getpid()),
                ]
            )
            assert close_dead_runs(store, host=here, own_pid=os.getpid()) == ["dead"]
            status = {r.run_id: (r.status, r.ended_at is not None) for r in store.runs()}
    finally:
        alive.communicate(b"\n", timeout=60)
    assert status == {
        "dead": ("CRASHED", True),
        "alive": ("RUNNING", False),
        "elsewhere": ("RUNNING", False),
        "parent": ("RUNNING", False),
    }
