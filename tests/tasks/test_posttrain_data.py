"""Generated post-training sets -> records -> shards -> the trainer's conversations, on easy-vqa data.

CoT samples are made by the real LongCoT steps (paths from hand-written generations, the rule judge,
step-5 scoring) around real easy-vqa questions and images; RL prompts come from the easy-vqa source.
"""

from __future__ import annotations

import json
from pathlib import Path

import easy_vqa
import pytest
import webdataset as wds

from data_specs.longcot import CoTProblem, CoTSample, LongCoTConfig, PreferencePair, read_jsonl, write_jsonl
from data_specs.schemas import ID_PATTERN, Record
from keye_model.training.examples import (
    judge_conversations,
    preference_conversations,
    rl_prompt,
    sft_conversation,
    to_example,
)
from tasks.generation import Generation, RuleJudge
from tasks.hints import hint_kind, rule_hints
from tasks.longcot import assess_quality, paths_from_generations, score_samples
from tasks.posttrain_data import (
    RL_TASKS,
    cot_records,
    cot_records_task,
    generated_mix,
    mix_in,
    mix_in_task,
    pair_records,
    pair_records_task,
    rl_prompt_records,
    rl_prompt_records_task,
    write_generated_shards,
    write_generated_shards_task,
)
from tasks.preference import build_preference_pairs, group_by_problem, no_think_response
from tasks.sources import SourceSpec, collect_records

GOOD = "<think>I look at the {noun} in the image.\nI check it against the question.\nIt is {ref}.</think>{ref}"
WRONG = "<think>I look at the {noun} in the image.\nI check it against the question.\nIt is {bad}.</think>{bad}"
WRONG_2 = "<think>The {noun} looks odd.\nI guess.\nMaybe {bad}.</think>{bad}"


def _problem(index: int) -> CoTProblem:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    return CoTProblem(
        id=f"easy-vqa-train-{index}",
        record_id=f"easy-vqa-train-{index}",
        source="easy-vqa",
        task="vqa",
        category="vqa",
        question=questions[index],
        reference=answers[index],
        media_path=easy_vqa.get_train_image_paths()[image_ids[index]],
    )


def _samples(problem: CoTProblem, templates: list[str]) -> list[CoTSample]:
    ref = problem.reference
    bad = {"yes": "no", "no": "yes", "circle": "triangle"}.get(ref, "circle")
    noun = problem.question.rstrip("?").split()[-1]
    gens = [
        Generation(text=t.format(ref=ref, bad=bad, noun=noun), token_logprobs=[-0.2], finish_reason="stop")
        for t in templates
    ]
    kept, rejected = assess_quality([problem], paths_from_generations(problem, gens), RuleJudge(), LongCoTConfig())
    return score_samples(kept, LongCoTConfig()) + rejected


def _read_back(stage) -> list[dict]:
    urls = [s.path for s in stage.shards]
    return sorted(wds.WebDataset(urls, shardshuffle=False), key=lambda s: s["__key__"])


@pytest.fixture(scope="module")
def samples() -> list[CoTSample]:
    # problems 0, 1 get a right and a wrong path; problem 2 only wrong ones (a weak model)
    return [s for i in (0, 1) for s in _samples(_problem(i), [GOOD, WRONG])] + _samples(_problem(2), [WRONG, WRONG_2])


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> list[Record]:
    return collect_records(SourceSpec(name="easy-vqa", limit=6), tmp_path_factory.mktemp("src")).records


@pytest.fixture(scope="module")
def shards(samples, collected, tmp_path_factory):
    """The three generated sets, each validated and sharded once."""
    out = tmp_path_factory.mktemp("shards")
    kept = [s for s in samples if s.tier.value != "C"]
    records = {
        "longcot": cot_records(kept),
        "preference": pair_records(build_preference_pairs(group_by_problem(samples))),
        "rl_prompts": rl_prompt_records(collected),
    }
    return {name: (recs, write_generated_shards(recs, name, out)) for name, recs in records.items()}


def test_cot_records_carry_the_response_and_replay_weight(samples):
    kept = [s for s in samples if s.tier.value != "C"]
    records = cot_records(kept)
    assert len(records) == len(kept) == 2
    for record, sample in zip(records, kept):
        assert ID_PATTERN.match(record.id) and record.task == "reasoning" and record.modality == "image"
        assert record.answer == f"<think>\n{sample.path.thinking}\n</think>\n\n{sample.path.answer}"
        assert (
            record.meta["replay_weight"] == sample.replay_weight
            and record.meta["quality_score"] == sample.quality_score
        )
        assert record.meta["tier"] == sample.tier.value and record.meta["problem_id"] == sample.problem.id
    rejected = next(s for s in samples if s.tier.value == "C")
    with pytest.raises(ValueError, match=f"sample {rejected.id}: tier C"):
        cot_records([rejected])


def test_longcot_shards_feed_sft_with_weights(shards, tmp_path):
    records, stage = shards["longcot"]
    assert stage.num_records == stage.num_unique_records == len(records)  # as generated: no repeats
    assert stage.planned == stage.realized == {"image": 1.0}
    by_id = {r.id: r for r in records}
    read = _read_back(stage)
    assert [s["__key__"] for s in read] == sorted(by_id)
    for sample in read:
        example = to_example(sample, tmp_path)
        record = by_id[example.sample_id]
        assert example.weight == record.meta["replay_weight"] and example.user_parts[0]["type"] == "image"
        conversation = sft_conversation(example)
        assert conversation[1]["content"] == record.answer and conversation[1]["content"].startswith("<think>\n")
        assert conversation[0]["content"][-1]["text"] == record.question


def test_preference_shards_feed_mpo_and_the_judge(shards, samples, tmp_path):
    records, stage = shards["preference"]
    reasons = {r.meta["reason"] for r in records}
    assert reasons == {"correct-vs-wrong", "reference-vs-wrong"}
    by_id = {r.id: r for r in records}
    for sample in _read_back(stage):
        example = to_example(sample, tmp_path)
        chosen, rejected = preference_conversations(example)
        record = by_id[example.sample_id]
        assert chosen[1]["content"] == record.meta["chosen"] == record.answer
        assert rejected[1]["content"] == record.meta["rejected"] != chosen[1]["content"]
        if record.meta["reason"] == "reference-vs-wrong":  # the weak-model problem: reference over a wrong path
            assert record.meta["problem_id"] == "easy-vqa-train-2"
            assert chosen[1]["content"] == no_think_response(_problem(2).reference)
        judged = judge_conversations(example)  # both orders, no_think then think
        assert [c[1]["content"] for c in judged] == ["A", "B", "A", "B"]
        assert all("reasoning_content" in c[1] for c in judged[2:])


def test_rl_prompt_shards_carry_hints_and_reference(shards, collected, tmp_path):
    records, stage = shards["rl_prompts"]
    # every question with a checkable answer is kept; captions (no single right answer) are not RL prompts
    assert [r.id for r in records] == [r.id for r in collected if r.task in RL_TASKS]
    assert len(records) < len(collected) and {r.task for r in collected} - set(RL_TASKS) == {"caption"}
    for sample in _read_back(stage):
        prompt = rl_prompt(to_example(sample, tmp_path))
        source = next(r for r in collected if r.id == prompt.id)
        assert prompt.reference == source.answer and len(prompt.hints) == 5
        assert prompt.hints == rule_hints(source) and prompt.hints[4].rstrip(".").endswith(source.answer)


def test_rule_hints_by_question_kind_and_never_leak_below_l5(collected):
    def record(question: str, answer: str, task: str = "vqa") -> Record:
        return Record(id="x", source="easy-vqa", modality="text", task=task, question=question, answer=answer)

    assert hint_kind(record("what is the blue shape?", "circle")) == "shape"
    assert "outline" in rule_hints(record("what shape is in the image?", "circle"))[0]
    assert hint_kind(record("what color is the triangle?", "red")) == "color"
    assert hint_kind(record("is there not a red circle in the image?", "no")) == "presence"
    assert hint_kind(record("how many shapes?", "3", task="counting")) == "counting"
    assert (
        hint_kind(record("When is the cat visible?", "From 1.0 to 2.0 seconds.", task="temporal_localization"))
        == "temporal"
    )
    assert hint_kind(record("What is 2 + 3?", "5", task="reasoning")) == "math"
    # same kind, different answers: L1..L3 identical, L4 (the first step, from the image's facts) and L5 differ
    circle, square = (
        rule_hints(record("what shape is present?", "circle")),
        rule_hints(record("what shape is present?", "rectangle")),
    )
    assert circle[:3] == square[:3] and circle[3:] != square[3:] and square[4].endswith("rectangle.")
    # captions are not RL prompts; explicit hints win and are checked
    caption = Record(
        id="cap",
        source="easy-vqa",
        modality="image",
        task="caption",
        question="",
        answer="a shape",
        media_path=collected[0].media_path,
    )
    out = rl_prompt_records([caption, collected[0]], {collected[0].id: ["look closely"]})
    assert [r.id for r in out] == [collected[0].id] and out[0].meta["hints"] == ["look closely"]
    with pytest.raises(ValueError, match=f"record {collected[0].id}: hints must be at most 5"):
        rl_prompt_records([collected[0]], {collected[0].id: ["h"] * 6})


def test_rl_candidates_are_a_seeded_draw_made_before_any_hint(collected):
    eligible = rl_prompt_records(collected)
    drawn = rl_prompt_records(collected, limit=3, seed=5)
    assert len(eligible) > 3 and len(drawn) == 3
    assert drawn == rl_prompt_records(collected, limit=3, seed=5)  # the same draw for the same seed
    assert [r.id for r in drawn] == [r.id for r in eligible if r.id in {d.id for d in drawn}]  # input order
    assert {d.id for d in drawn} != {d.id for d in rl_prompt_records(collected, limit=3, seed=6)}
    assert rl_prompt_records(collected, limit=10_000) == eligible


def test_generated_mix_is_the_sets_own_token_shares(collected):
    text = Record(id="t", source="text-instructions", modality="text", task="instruction", question="q", answer="a")
    mix = generated_mix("preference", [*collected[:3], text, text], lambda r: 5 if r.modality == "text" else 30)
    assert mix.name == "preference" and mix.planned() == pytest.approx({"image": 0.9, "text": 0.1})
    with pytest.raises(ValueError, match="generated set 'longcot': no tokens"):
        generated_mix("longcot", [], lambda r: 1)


def test_the_cold_start_set_mixes_in_a_share_of_the_sft_pool_as_the_pool_weighs_it(samples, collected):
    cot = cot_records([s for s in samples if s.tier.value != "C"])
    text = Record(id="t-1", source="text-instructions", modality="text", task="instruction", question="q", answer="a")
    pool = [*collected, *[text] * 40, cot[0]]  # a record the mix repeats 40 times; one already in the set
    mixed = mix_in(cot, pool, 1 / 3, "sft", seed=0)
    drawn = mixed[len(cot) :]
    assert mixed[: len(cot)] == cot and len(drawn) == round(len(cot) / 2)
    assert all(r.meta["mixed_in_from"] == "sft" for r in drawn) and "mixed_in_from" not in cot[0].meta
    assert len({r.id for r in mixed}) == len(mixed)  # distinct, never a record the set has
    assert mix_in(cot, pool, 1 / 3, "sft", seed=0) == mixed  # seeded
    # the draw follows the pool's samples: a record repeated 40 times in 46 comes first in almost every draw
    firsts = [mix_in(cot[:2], pool, 1 / 3, "sft", seed=s)[2].id for s in range(20)]
    assert firsts.count("t-1") >= 14
    assert mix_in(cot, pool, 0.0, "sft") == cot and mix_in([], pool, 0.5, "sft") == []
    assert len(mix_in(cot, collected[:1], 0.5, "sft")) == len(cot) + 1  # the pool runs out: what it has
    with pytest.raises(ValueError, match=r"mix-in share must be in \[0, 1\)"):
        mix_in(cot, pool, 1.0, "sft")


def test_the_mix_in_task_draws_from_a_mixs_shards(shards, tmp_path):
    cot_path = write_jsonl(shards["longcot"][0], tmp_path / "cot.jsonl")
    rl_records, rl_shards = shards["rl_prompts"]
    out = mix_in_task.fn(
        str(cot_path), [s.path for s in rl_shards.shards], 0.5, "rl_prompts", str(tmp_path / "cs.jsonl")
    )
    mixed = read_jsonl(out, Record)
    drawn = mixed[len(shards["longcot"][0]) :]
    assert len(drawn) == len(shards["longcot"][0]) and {r.id for r in drawn} <= {r.id for r in rl_records}
    assert all(r.meta["mixed_in_from"] == "rl_prompts" for r in drawn)


def test_bad_records_are_quarantined_and_tasks_chain_by_path(samples, collected, tmp_path):
    kept = write_jsonl([s for s in samples if s.tier.value != "C"], tmp_path / "kept.jsonl")
    cot_path = cot_records_task.fn(str(kept), str(tmp_path / "cot.jsonl"))
    blank = Record(
        id="easy-vqa-blank",
        source="easy-vqa",
        modality="image",
        task="reasoning",
        question="q",
        answer="  ",
        media_path=collected[0].media_path,
    )
    write_jsonl([*read_jsonl(cot_path, Record), blank], tmp_path / "with-bad.jsonl")
    manifest_path = write_generated_shards_task.fn(str(tmp_path / "with-bad.jsonl"), "longcot", str(tmp_path / "out"))
    manifest = json.loads(Path(manifest_path).read_text())
    assert manifest["num_records"] == 2 and blank.id not in json.dumps(manifest["shards"])
    quarantined = [
        json.loads(line) for line in (tmp_path / "out" / "longcot" / "quarantine.jsonl").read_text().splitlines()
    ]
    assert [(q["id"], q["reasons"]) for q in quarantined] == [(blank.id, ["empty answer"])]

    pairs = write_jsonl(build_preference_pairs(group_by_problem(samples)), tmp_path / "pairs.jsonl")
    pair_path = pair_records_task.fn(str(pairs), str(tmp_path / "pr.jsonl"))
    assert read_jsonl(pair_path, Record) == pair_records(read_jsonl(pairs, PreferencePair))
    (tmp_path / "hints.json").write_text(json.dumps({collected[0].id: ["a", "b"]}))
    write_jsonl(collected, tmp_path / "records.jsonl")
    rl = read_jsonl(
        rl_prompt_records_task.fn(
            str(tmp_path / "records.jsonl"), str(tmp_path / "rl.jsonl"), str(tmp_path / "hints.json")
        ),
        Record,
    )
    assert rl[0].meta["hints"] == ["a", "b"] and all(len(r.meta["hints"]) == 5 for r in rl[1:])
