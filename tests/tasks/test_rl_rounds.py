"""Between RL rounds: round stage names, the reward model that judges rejection sampling, and the
rejection-sampling task on real tiny checkpoints (an RL model and a judge) over easy-vqa cold-start records."""

from __future__ import annotations

import dataclasses

import easy_vqa
import pytest
import torch

from data_specs.longcot import read_jsonl, write_jsonl
from data_specs.presets import get_preset
from data_specs.schemas import Record
from data_specs.stages import JUDGE_OBJECTIVES
from keye_model.config import KeyeConfig
from keye_model.model import KeyeForConditionalGeneration
from keye_model.tokenizer import tiny_tokenizer
from tasks.rl_rounds import (
    count_lines,
    record_round_task,
    rejection_sample_task,
    reward_stage_of,
    round_name,
    round_stage,
)


def test_round_stages_and_the_judging_reward_model():
    preset = get_preset("tiny")
    gspo = preset.stage("gspo")
    again = round_stage(gspo, round_name("gspo", 2), inputs=(round_name("coldstart", 2),))
    assert (again.name, again.inputs, again.rl, again.data_mix) == ("gspo-r2", ("coldstart-r2",), gspo.rl, "rl_prompts")
    # the latest earlier judge stage: the reward model the alignment stage scores with
    assert reward_stage_of(gspo, preset.stages).name == preset.stage("alignment").reward_model
    no_judge = tuple(s for s in preset.stages if s.objective not in JUDGE_OBJECTIVES and s.reward_model is None)
    with pytest.raises(ValueError, match="stage gspo: 2 RL rounds need a reward model"):
        reward_stage_of(dataclasses.replace(gspo, rl=dataclasses.replace(gspo.rl, num_iterations=2)), no_judge)


def _checkpoint(path, seed: int, indifferent: bool = False) -> str:
    tokenizer = tiny_tokenizer(path)
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(seed)
    model = KeyeForConditionalGeneration(config)
    if indifferent:  # "A" and "B" get the same logit whatever the input: the judge prefers neither
        head = model.language_model.lm_head.weight
        with torch.no_grad():
            head[tokenizer.convert_tokens_to_ids("A")] = head[tokenizer.convert_tokens_to_ids("B")]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory) -> str:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    records = [
        Record(
            id=f"cot-{i}",
            source="easy-vqa",
            modality="image",
            task="reasoning",
            question=questions[i],
            answer=f"<think>\nI look at the shape.\n</think>\n\n{answers[i]}",
            media_path=paths[image_ids[i]],
            meta={"replay_weight": 2.0},
        )
        for i in range(6)
    ]
    return str(write_jsonl(records, tmp_path_factory.mktemp("cot") / "longcot_records.jsonl"))


def test_rejection_sampling_replaces_what_the_judge_prefers(tmp_path, cold_start):
    rl_model = _checkpoint(tmp_path / "rl", seed=1)
    original = {r.id: r for r in read_jsonl(cold_start, Record)}
    # An indifferent judge (P = 0.5 in both orders) replaces nothing: the set comes back as it was.
    path, counts = rejection_sample_task.fn(
        rl_model, _checkpoint(tmp_path / "flat", seed=2, indifferent=True), cold_start, str(tmp_path / "a.jsonl"), 2
    )
    assert counts == {"resampled": 6, "wrong": 0, "replaced": 0} and read_jsonl(path, Record) == list(original.values())
    # A random judge: every replaced record, and only those, carries the RL answer and a preference > 0.5.
    judge = _checkpoint(tmp_path / "judge", seed=3)
    path, counts = rejection_sample_task.fn(rl_model, judge, cold_start, str(tmp_path / "b.jsonl"), 2, max_new_tokens=8)
    out, replaced = read_jsonl(path, Record), counts["replaced"]
    assert [r.id for r in out] == list(original) and counts["resampled"] == 6 and counts["wrong"] == 0
    changed = [r for r in out if r != original[r.id]]
    assert 0 < replaced < 6  # with these seeds the random judge prefers some RL answers, not all
    assert len(changed) == replaced == count_lines(path) - sum(r == original[r.id] for r in out)
    for record in changed:
        assert record.meta["replaced_in_round"] == 2 and record.meta["judge_preference"] > 0.5
        assert record.meta["replay_weight"] == 2.0 and record.answer != original[record.id].answer
        assert (record.question, record.media_path) == (original[record.id].question, original[record.id].media_path)
    # The same judge on records whose problems have a checkable answer, which the random RL model never
    # gives: every RL answer is wrong, so none is judged and none replaces a reference.
    checked = [dataclasses.replace(r, meta={**r.meta, "reference": r.answer.split()[-1]}) for r in original.values()]
    checked_path = str(write_jsonl(checked, tmp_path / "checked.jsonl"))
    out_path = str(tmp_path / "c.jsonl")
    path, counts = rejection_sample_task.fn(rl_model, judge, checked_path, out_path, 2, max_new_tokens=8)
    assert counts == {"resampled": 6, "wrong": 6, "replaced": 0} and read_jsonl(path, Record) == checked


def test_round_counts_reach_lineage(tmp_path):
    from tasks.lineage import LineageStore

    db = str(tmp_path / "lineage.duckdb")
    record_round_task.fn(db, "run-1", "gspo-r2", 2, {"resampled": 6, "replaced": 1, "prompts": 9, "prompts_kept": 4})
    with LineageStore(db, read_only=True) as store:
        rows = store.con.execute(
            "select name, step, value from metrics where stage = 'gspo-r2' order by name"
        ).fetchall()
    assert rows == [
        ("rounds/prompts", 2, 9.0),
        ("rounds/prompts_kept", 2, 4.0),
        ("rounds/replaced", 2, 1.0),
        ("rounds/resampled", 2, 6.0),
    ]
    with pytest.raises(ValueError, match=r"unknown round counts \['rounds/made_up'\]"):
        record_round_task.fn(db, "run-1", "gspo-r2", 2, {"made_up": 1})
