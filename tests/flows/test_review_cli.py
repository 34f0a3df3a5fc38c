"""``keye review`` against a real paused flow run: a small flow asks for a review (``mode="ui"``) of two
tier-B samples, ``keye review list`` finds it with its samples, ``keye review answer`` resumes it, and the
flow gets -- and records in a real lineage file -- the reviewer's decisions."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from data_specs.longcot import CoTPath, CoTProblem, CoTSample, JudgeVerdict, QualityTier, ReviewDecision, RuleReport
from keye_cli import review as cli

QUESTION = "what color is the shape?"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="keye")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def tier_b(index: int, answer: str) -> CoTSample:
    """A sample the rules and judge left in tier B: it needs a person."""
    problem = CoTProblem(
        id=f"p{index}",
        record_id=f"r{index}",
        source="hand",
        task="vqa",
        category="vqa",
        question=QUESTION,
        reference="blue",
    )
    text = f"<think>The shape is filled.\nIts color is {answer}.</think>{answer}"
    path = CoTPath(
        id=f"p{index}-p0",
        problem_id=problem.id,
        text=text,
        thinking=text.split("</think>")[0][7:],
        answer=answer,
        finish_reason="stop",
        num_tokens=12,
        mean_logprob=-0.4,
        step_min_logprob=-1.2,
        agreement=0.5,
    )
    rules = RuleReport(well_formed=True, answer_correct=answer == "blue", length_ok=True, repetitive=False, num_steps=2)
    verdict = JudgeVerdict(judge="rule-judge", scores={"logical_consistency": 3, "factual_accuracy": 3, "relevance": 3})
    return CoTSample(
        id=path.id,
        problem=problem,
        path=path,
        rules=rules,
        verdict=verdict,
        tier=QualityTier.B,
        reasons=("judge mean 3.0 < 4",),
    )


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def wait_for_listed_review(capsys, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert run_cli(["review", "list", "--json"]) == 0
        pending = json.loads(capsys.readouterr().out)
        if pending:
            return pending
        time.sleep(0.5)
    pytest.fail(f"no flow run waiting for review within {timeout_s} s")


@pytest.mark.slow
def test_review_list_and_answer_resume_the_paused_flow(prefect_harness, tmp_path, capsys):
    from prefect import flow
    from prefect.runtime import flow_run

    from tasks.lineage import LineageStore
    from tasks.posttrain_steps import record_reviews_task
    from tasks.review import request_review

    lineage_db = str(tmp_path / "lineage.duckdb")

    @flow(name="review-cli-test")
    def review_flow(samples_json: list[str]) -> dict:
        samples = [CoTSample.from_json(t) for t in samples_json]
        decisions = request_review(samples, mode="ui", timeout_s=180, poll_interval_s=1)
        # what posttrain's make_generated_data does with them
        record_reviews_task(lineage_db, str(flow_run.id), decisions)
        return {"run_id": str(flow_run.id), "decisions": [d.to_json() for d in decisions]}

    samples = [tier_b(0, "red"), tier_b(1, "blue")]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(review_flow([s.to_json() for s in samples])), daemon=True)
    thread.start()

    (pending,) = wait_for_listed_review(capsys)
    assert pending["state"] == "Paused"
    assert [(s["sample_id"], s["tier"], s["question"], s["response"]) for s in pending["samples"]] == [
        (s.id, "B", QUESTION, s.path.text) for s in samples
    ]
    run_id = pending["flow_run_id"]
    assert run_cli(["review", "list"]) == 0
    table = capsys.readouterr().out
    assert run_id in table and "p0-p0  tier B  Q: what color is the shape?" in table

    # Refused before anything reaches the run: a sample it does not review, one left out, a malformed edit.
    for argv, message in (
        (["--decision", "nope=reject", "--rest", "approve"], r"does not review \['nope'\]"),
        (["--decision", "p0-p0=reject"], r"no decision for \['p1-p0'\]"),
        (["--decision", "p0-p0=edit:just blue", "--rest", "approve"], "edit of p0-p0"),
    ):
        with pytest.raises(ValueError, match=message):
            run_cli(["review", "answer", run_id, "--reviewer", "alice", *argv])
    assert run_cli(["review", "list", "--json"]) == 0
    assert [p["flow_run_id"] for p in json.loads(capsys.readouterr().out)] == [run_id]  # still paused

    assert (
        run_cli(["review", "answer", run_id, "--reviewer", "alice", "--decision", "p0-p0=reject", "--rest", "approve"])
        == 0
    )
    assert "1 approve, 0 edit, 1 reject" in capsys.readouterr().out
    thread.join(timeout=120)
    assert not thread.is_alive(), "the flow did not finish after the review was answered"

    decisions = [ReviewDecision.from_json(t) for t in result["decisions"]]
    assert [(d.sample_id, d.decision, d.reviewer) for d in decisions] == [
        ("p0-p0", "reject", "alice"),
        ("p1-p0", "approve", "alice"),
    ]
    with LineageStore(Path(lineage_db), read_only=True) as store:
        recorded = store.reviews(result["run_id"])
    assert sorted((r.sample_ids, r.decision, r.reviewer) for r in recorded) == [
        (("p0-p0",), "reject", "alice"),
        (("p1-p0",), "approve", "alice"),
    ]
    assert result["run_id"] == run_id

    with pytest.raises(ValueError, match=f"flow run {run_id} .* is Completed, not paused"):
        run_cli(["review", "answer", run_id, "--reviewer", "alice", "--approve-all"])


def test_parse_decision():
    assert cli.parse_decision("s1=edit:<think>a</think> b") == (
        "s1",
        {"decision": "edit", "edited_response": "<think>a</think> b"},
    )
    assert cli.parse_decision("s-2=reject") == ("s-2", {"decision": "reject", "edited_response": ""})
    for bad in ("s1", "s1=maybe", "=approve", "s1=reject:why"):
        with pytest.raises(ValueError, match="--decision"):
            cli.parse_decision(bad)
