"""Instruction compliance on held-out alignment prompts: the scoring on known answers, the held-out data
kept apart from every curated source, and a real greedy run of a tiny checkpoint."""

from __future__ import annotations

import pytest

from keye_model.rewards import Constraint
from tasks.alignment_prompts import constraints_of
from tasks.evaluation import alignment_eval as ae
from tasks.sources import SourceSpec, text_instructions


def test_compliance_counts_constraints_and_whole_prompts():
    lower, short = Constraint(kind="all_lowercase"), Constraint(kind="max_words", params={"limit": 2})
    js = Constraint(kind="json_format")
    metrics = ae.compliance(["Circle", '{"answer": "circle"}'], [(short, lower), (js,)])
    assert metrics["alignment/compliance"] == pytest.approx(2 / 3)
    assert metrics["alignment/all_constraints"] == 0.5
    assert metrics["alignment/prompts"] == 2.0
    assert metrics["alignment/compliance/all_lowercase"] == 0.0 and metrics["alignment/compliance/json_format"] == 1.0
    assert metrics["alignment/compliance_ci95_low"] < 0.5 < metrics["alignment/compliance_ci95_high"]
    with pytest.raises(ValueError, match="constraint sets"):
        ae.compliance(["a"], [])


def test_held_out_prompts_come_from_data_no_mix_holds(tmp_path):
    prompts = ae.held_out_alignment_prompts(40, seed=0)
    assert len(prompts) == 40 and prompts == ae.held_out_alignment_prompts(40, seed=0)
    image = [p for p in prompts if p.modality == "image"]
    text = [p for p in prompts if p.modality == "text"]
    assert len(image) == 20 and len(text) == 20
    # easy-vqa: test split only (curation reads the train split: ids easy-vqa-train-*).
    assert all(p.id.startswith("easy-vqa-test-") and "/test/" in p.media_path for p in image)
    # Text: functions of modules the text-instructions source never reads.
    assert not set(ae.HELD_OUT_MODULES) & set(text_instructions.MODULES)
    curated = text_instructions.collect(SourceSpec(name="text-instructions", limit=10_000, seed=0), tmp_path)
    curated_functions = {r.meta["function"] for r in curated.records}
    assert all(p.meta["function"] not in curated_functions for p in text)
    for prompt in prompts:
        assert constraints_of(prompt) and prompt.question.rstrip().endswith(("/think", "/no_think"))


def test_evaluate_alignment_runs_greedy_answers_of_a_checkpoint(eval_model):
    metrics = ae.evaluate_alignment(eval_model, 6, seed=1, max_new_tokens=4)
    assert metrics["alignment/prompts"] == 6.0
    assert 0.0 <= metrics["alignment/all_constraints"] <= metrics["alignment/compliance"] <= 1.0
    # The same prompts answered greedily score the same.
    assert ae.evaluate_alignment(eval_model, 6, seed=1, max_new_tokens=4) == metrics
