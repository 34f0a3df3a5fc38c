"""The chain's numbers come from the files it wrote: tiers over kept and rejected paths, pair kinds."""

from __future__ import annotations

import json

import pytest

from tasks.chain_report import chain_metrics, record_chain_metrics_task
from tasks.lineage import LineageStore, Run


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_chain_metrics_count_tiers_pairs_and_prompts(tmp_path):
    kept = [{"tier": "A", "borderline": False}, {"tier": "A", "borderline": True}, {"tier": "B", "borderline": True}]
    write(tmp_path / "assessed.jsonl", kept)
    write(tmp_path / "assessed_rejects.jsonl", [{"tier": t, "borderline": False} for t in "CCAC"])
    write(tmp_path / "review_rejects.jsonl", [{}])
    write(tmp_path / "cot_samples.jsonl", [{}, {}])
    # the cold-start set: the two samples' records and one SFT record mixed in
    write(tmp_path / "coldstart.jsonl", [{"meta": {}}, {"meta": {}}, {"meta": {"mixed_in_from": "sft"}}])
    reasons = ["correct-vs-wrong", "score-gap", "reference-vs-wrong", "correct-vs-wrong"]
    write(tmp_path / "pairs.jsonl", [{"reason": r} for r in reasons])
    write(tmp_path / "rl_prompts.jsonl", [{}] * 5)
    metrics = chain_metrics(tmp_path)
    assert metrics["longcot/paths"] == 7 and metrics["longcot/tier_A"] == 3 and metrics["longcot/tier_C"] == 3
    assert metrics["longcot/pass_share"] == pytest.approx(4 / 7)
    assert metrics["longcot/to_review"] == 2 and metrics["longcot/review_rejected"] == 1
    assert metrics["longcot/kept"] == 2 and metrics["longcot/mixed_in"] == 1
    assert metrics["pairs/total"] == 4 and metrics["pairs/model_vs_model"] == 3
    assert metrics["pairs/model_vs_model_share"] == pytest.approx(0.75)
    assert metrics["rl_prompts/kept"] == 5


def test_an_empty_chain_reads_zeros_and_lands_in_lineage(tmp_path):
    db = str(tmp_path / "lineage.duckdb")
    with LineageStore(db) as store:
        store.record_run(Run(run_id="run-1", flow_name="posttrain"))
    metrics = record_chain_metrics_task.fn(db, "run-1", str(tmp_path / "missing"))
    assert metrics["longcot/paths"] == 0 and metrics["pairs/model_vs_model_share"] == 0
    with LineageStore(db, read_only=True) as store:
        stored = {m.name: m.value for m in store.metrics("run-1", stage="posttrain")}
    assert stored == metrics
