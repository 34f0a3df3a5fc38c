"""Evaluation metrics in a real DuckDB lineage file, and the stage comparison table."""

from __future__ import annotations

import math

import pytest

from tasks.evaluation.report import comparison_table, eval_rows, record_eval_metrics, record_eval_metrics_task
from tasks.lineage import Artifact, LineageStore, Run

RUN = "run-eval-1"


@pytest.fixture
def store(tmp_path):
    with LineageStore(tmp_path / "lineage.duckdb") as opened:
        opened.record_run(Run(run_id=RUN, flow_name="evaluate"))
        yield opened


def test_metrics_tie_to_a_recorded_checkpoint(store, tmp_path):
    # As tasks.train records it: the resolved directory as uri, with a content hash in the id.
    checkpoint = Artifact(
        kind="checkpoint", uri=str(tmp_path / "sft" / "checkpoint"), sha256="ab" * 32, metadata={"stage": "sft"}
    )
    store.record_artifacts([checkpoint])
    metrics = {"vqa/accuracy": 0.25, "temporal/mae_start_s": math.nan}
    evaluation = record_eval_metrics(store, RUN, "sft", checkpoint.uri, metrics)
    assert evaluation.kind == "eval" and evaluation.metadata["metrics"] == {
        "temporal/mae_start_s": None,
        "vqa/accuracy": 0.25,
    }
    children = store.descendants(checkpoint.artifact_id)
    assert [node.artifact_id for node in children] == [evaluation.artifact_id]
    recorded = {m.name: m.value for m in store.metrics(RUN, stage="sft")}
    assert recorded["eval/vqa/accuracy"] == 0.25 and math.isnan(recorded["eval/temporal/mae_start_s"])
    # Writing the same evaluation again adds nothing.
    before = (store.count("artifacts"), store.count("edges"), store.count("metrics"))
    record_eval_metrics(store, RUN, "sft", checkpoint.artifact_id, metrics)
    assert (store.count("artifacts"), store.count("edges"), store.count("metrics")) == before


def test_an_unknown_checkpoint_is_recorded_first(store):
    evaluation = record_eval_metrics(store, RUN, "mpo", "/ckpt/mpo", {"vqa/accuracy": 0.5})
    parent = store.resolve("/ckpt/mpo")
    assert parent.startswith("checkpoint:")
    assert [n.artifact_id for n in store.descendants(parent)] == [evaluation.artifact_id]
    with pytest.raises(ValueError, match="no metrics to record for checkpoint /ckpt/mpo"):
        record_eval_metrics(store, RUN, "mpo", "/ckpt/mpo", {})


def test_task_entry_point_writes_the_file(tmp_path):
    db = str(tmp_path / "lineage.duckdb")
    artifact_id = record_eval_metrics_task.fn(db, RUN, "sft", "/ckpt/sft", {"probe/accuracy": 0.75})
    with LineageStore(db, read_only=True) as store:
        assert store.resolve(artifact_id) == artifact_id
        assert [(m.name, m.value) for m in store.metrics(RUN)] == [("eval/probe/accuracy", 0.75)]


def test_comparison_table_known_answer():
    rows = [
        ("sft", {"vqa/accuracy": 0.2, "probe/accuracy": 0.5}),
        ("mpo", {"vqa/accuracy": 0.25}),
        ("rl", {"vqa/accuracy": 0.4, "probe/accuracy": math.nan}),
    ]
    assert comparison_table(rows) == (
        "| metric | sft | mpo | rl | change |\n"
        "|---|---:|---:|---:|---:|\n"
        "| probe/accuracy | 0.500 | n/a | n/a | n/a |\n"
        "| vqa/accuracy | 0.200 | 0.250 | 0.400 | +0.200 |\n"
    )
    with pytest.raises(ValueError, match="repeat"):
        comparison_table([("sft", {}), ("sft", {})])


def test_rows_from_the_store_feed_the_table(store):
    record_eval_metrics(store, RUN, "sft", "/ckpt/sft", {"vqa/accuracy": 0.2})
    record_eval_metrics(store, RUN, "mpo", "/ckpt/mpo", {"vqa/accuracy": 0.3})
    rows = eval_rows(store, RUN, ["sft", "mpo"])
    assert rows == [("sft", {"vqa/accuracy": 0.2}), ("mpo", {"vqa/accuracy": 0.3})]
    assert "| vqa/accuracy | 0.200 | 0.300 | +0.100 |" in comparison_table(rows)
