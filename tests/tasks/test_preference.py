"""MPO pairs from easy-vqa problems (real questions, answers and images) with hand-written path sets."""

from __future__ import annotations

import dataclasses

import easy_vqa
import pytest

from data_specs.longcot import (
    CoTProblem,
    CoTSample,
    LongCoTConfig,
    PreferenceConfig,
    PreferencePair,
    read_jsonl,
    write_jsonl,
)
from keye_model.answers import answers_match, split_thinking
from tasks.generation import Generation, RuleJudge
from tasks.longcot import assess_quality, paths_from_generations
from tasks.preference import (
    ANSWER_PAIR_REASON,
    FILLER,
    LENGTH_BIAS_REASONS,
    answer_pairs,
    build_preference_pairs,
    build_preference_pairs_task,
    build_reward_anneal_pairs_task,
    build_reward_pairs_task,
    group_by_problem,
    length_bias_pairs,
    no_think_response,
    pairs_for_problem,
    reference_pairs,
    reward_anneal_pairs,
)
from tasks.sources import SourceSpec, text_instructions
from tasks.sources import easy_vqa as easy_vqa_source

GOOD = "<think>I look at the {noun} in the image.\nI check it against the question.\nIt is {ref}.</think>{ref}"
SAME_AS_PREVIOUS_OTHER_CASE = "(same text as the previous path, other case and spacing)"
SHORT = "<think>The {noun} is {ref}.</think>{ref}"  # right, one step: tier B
WRONG = "<think>I look at the {noun} in the image.\nI check it against the question.\nIt is {bad}.</think>{bad}"


def _problem(split: str, index: int) -> CoTProblem:
    loader = easy_vqa.get_train_questions if split == "train" else easy_vqa.get_test_questions
    images = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    questions, answers, image_ids = loader()
    return CoTProblem(
        id=f"easy-vqa-{split}-{index}",
        record_id=f"easy-vqa-{split}-{index}",
        source=f"easy-vqa-{split}",
        task="vqa",
        category="vqa",
        question=questions[index],
        reference=answers[index],
        media_path=images[image_ids[index]],
    )


def _samples(problem: CoTProblem, templates: list[str]) -> list[CoTSample]:
    bad = (
        "no"
        if problem.reference == "yes"
        else "yes"
        if problem.reference == "no"
        else "circle"
        if problem.reference != "circle"
        else "triangle"
    )
    noun = problem.question.rstrip("?").split()[-1]  # "what is the blue shape?" -> the reasoning names the shape
    texts = [t.format(ref=problem.reference, bad=bad, noun=noun) for t in templates]
    texts = [f"  {texts[i - 1].upper()} " if t == SAME_AS_PREVIOUS_OTHER_CASE else t for i, t in enumerate(texts)]
    gens = [Generation(text=t, token_logprobs=[-0.2], finish_reason="stop") for t in texts]
    kept, rejected = assess_quality([problem], paths_from_generations(problem, gens), RuleJudge(), LongCoTConfig())
    return kept + rejected


def test_pairs_put_right_over_wrong_and_stay_valid():
    problem = _problem("train", 0)  # what is the blue shape? -> rectangle
    samples = _samples(problem, [GOOD, SHORT, WRONG, SAME_AS_PREVIOUS_OTHER_CASE])
    pairs = build_preference_pairs(
        group_by_problem(samples), PreferenceConfig(max_pairs_per_prompt=10, min_score_gap=0.5)
    )
    assert pairs, "a right and a wrong path make pairs"
    for p in pairs:
        assert p.prompt == problem.question and p.media_path == problem.media_path and p.problem_id == problem.id
        assert p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip()
        assert p.chosen.endswith(problem.reference) and p.chosen_score > p.rejected_score
    reasons = [(p.chosen.count("\n"), p.reason) for p in pairs]
    # correct-vs-wrong first (GOOD, SHORT each against the wrong text), then GOOD over SHORT by score gap
    assert [r for _, r in reasons] == ["correct-vs-wrong"] * 2 + ["score-gap"]
    assert pairs[0].chosen.count("\n") == 2  # the best chosen (GOOD) leads
    # the two wrong paths differ only in case and spacing: one pair each for GOOD and SHORT, not two
    assert len({(p.chosen, " ".join(p.rejected.lower().split())) for p in pairs}) == len(pairs) == 3


def test_no_pairs_without_a_contrast():
    problem = _problem("train", 1)
    assert build_preference_pairs(group_by_problem(_samples(problem, [GOOD, GOOD, GOOD]))) == []  # identical texts
    # nothing to choose among the paths (the builder falls back to the reference: see reference_pairs)
    assert pairs_for_problem(_samples(problem, [WRONG, WRONG]), PreferenceConfig()) == []


def test_cap_per_prompt_and_balance_across_sources():
    train = [_problem("train", i) for i in range(3)]
    test = [_problem("test", 0)]
    groups = {}
    for problem in train:
        groups.update(group_by_problem(_samples(problem, [GOOD, SHORT, WRONG])))
    groups.update(group_by_problem(_samples(test[0], [GOOD, WRONG])))
    capped = build_preference_pairs(groups, PreferenceConfig(max_pairs_per_prompt=2, source_balance_ratio=100))
    per_prompt = {pid: sum(p.problem_id == pid for p in capped) for pid in groups}
    assert per_prompt == {p.id: 2 for p in train} | {test[0].id: 1}
    balanced = build_preference_pairs(groups, PreferenceConfig(max_pairs_per_prompt=2, source_balance_ratio=2))
    by_source = {s: [p for p in balanced if p.source == s] for s in ("easy-vqa-train", "easy-vqa-test")}
    assert len(by_source["easy-vqa-test"]) == 1 and len(by_source["easy-vqa-train"]) == 2
    # the cut keeps each prompt's best pair first: two different prompts, both correct-vs-wrong
    assert len({p.problem_id for p in by_source["easy-vqa-train"]}) == 2
    assert {p.reason for p in by_source["easy-vqa-train"]} == {"correct-vs-wrong"}
    assert len({p.id for p in balanced}) == len(balanced)


def test_pair_validation_and_task_round_trip(tmp_path):
    with pytest.raises(ValueError, match="pair x: chosen and rejected are identical"):
        PreferencePair(
            id="x",
            problem_id="p",
            source="s",
            prompt="q",
            media_path=None,
            chosen="a",
            rejected="a",
            chosen_score=1,
            rejected_score=0,
            reason="score-gap",
        )
    problem = _problem("test", 1)
    samples = _samples(problem, [GOOD, WRONG])
    kept = write_jsonl([s for s in samples if s.tier.value != "C"], tmp_path / "kept.jsonl")
    rejects = write_jsonl([s for s in samples if s.tier.value == "C"], tmp_path / "rejects.jsonl")
    out = build_preference_pairs_task.fn([str(kept), str(rejects)], str(tmp_path / "pairs.jsonl"), PreferenceConfig())
    assert read_jsonl(out, PreferencePair) == build_preference_pairs(group_by_problem(samples))
    assert len(read_jsonl(out, PreferencePair)) == 1


@pytest.mark.slow
def test_curated_samples_and_pairs_pass_the_gx_suites():
    """Steps 3-5 and pairing end to end on easy-vqa problems; the outputs pass data_specs.expectations."""
    from data_specs.expectations import cot_row, pair_row
    from tasks.longcot import score_samples
    from tasks.review import apply_decisions, request_review
    from tasks.validate import run_suite

    config = LongCoTConfig()
    samples = [s for i in range(3) for s in _samples(_problem("train", i), [GOOD, SHORT, WRONG])]
    kept = [s for s in samples if s.tier.value != "C" and "surplus" not in s.reasons[-1]]
    discarded = [s for s in samples if s not in kept]
    reviewed, review_rejects = apply_decisions(kept, request_review(kept, mode="auto"))
    scored = score_samples(reviewed, config)
    assert scored and all(s.review is not None for s in scored if s.tier.value == "B")
    assert run_suite("cot", [cot_row(s) for s in scored]) == [[] for _ in scored]
    pairs = build_preference_pairs(group_by_problem(reviewed + review_rejects + discarded))
    assert pairs and run_suite("pair", [pair_row(p) for p in pairs]) == [[] for _ in pairs]


OTHER_WRONG = "<think>The {noun} looks odd to me.\nI am not sure.\nI guess {bad}.</think>{bad}"


def test_reference_pairs_appear_exactly_when_no_right_path_exists():
    """A weak model wrong on every path still gives MPO pairs: the reference (no-think form) over each wrong path."""
    weak, strong = _problem("train", 3), _problem("train", 4)
    weak_samples = _samples(weak, [WRONG, SAME_AS_PREVIOUS_OTHER_CASE, OTHER_WRONG])
    strong_samples = _samples(strong, [GOOD, WRONG])
    pairs = build_preference_pairs(
        group_by_problem(weak_samples + strong_samples),
        PreferenceConfig(source_balance_ratio=100, max_reference_pairs_per_prompt=4),
    )
    by_problem = {pid: [p for p in pairs if p.problem_id == pid] for pid in (weak.id, strong.id)}
    assert {p.reason for p in by_problem[strong.id]} == {"correct-vs-wrong"}
    assert {p.reason for p in by_problem[weak.id]} == {"reference-vs-wrong"}
    reference = no_think_response(weak.reference)
    assert reference == f"<think>\n\n</think>\n\n{weak.reference}"
    # two distinct wrong texts (the case/spacing variant is a duplicate); well-formed, best-scored first
    assert [p.chosen for p in by_problem[weak.id]] == [reference] * 2
    assert len({" ".join(p.rejected.lower().split()) for p in by_problem[weak.id]}) == 2
    assert all(p.rejected_score < p.chosen_score for p in by_problem[weak.id])
    assert len({p.id for p in pairs}) == len(pairs)
    # capped per prompt; none without a reference; none for a problem with a right path
    # by default one reference pair a problem (its hardest negative), whatever the model's own pairs' cap
    assert [p.rejected for p in reference_pairs(weak_samples, PreferenceConfig(max_pairs_per_prompt=4))] == [
        by_problem[weak.id][0].rejected
    ]
    unreferenced = [
        dataclasses.replace(s, problem=dataclasses.replace(s.problem, reference=None)) for s in weak_samples
    ]
    assert reference_pairs(unreferenced, PreferenceConfig()) == []
    assert reference_pairs(strong_samples, PreferenceConfig())[0].rejected == strong_samples[-1].path.text
    assert not [p for p in build_preference_pairs(group_by_problem(strong_samples)) if p.reason == "reference-vs-wrong"]


def test_the_annealing_set_adds_pairs_whose_better_answer_is_shorter(tmp_path):
    """Length-bias pairs (SPEC.md, Keye-Reward): marked by reason, better side strictly shorter, after the pairs."""
    strong, weak = _problem("train", 4), _problem("train", 3)
    samples = _samples(strong, [GOOD, WRONG]) + _samples(weak, [WRONG, OTHER_WRONG])
    pairs = build_preference_pairs(group_by_problem(samples), PreferenceConfig(source_balance_ratio=100))
    extra = length_bias_pairs(pairs)
    assert {p.reason for p in extra} == set(LENGTH_BIAS_REASONS)
    assert all(len(p.chosen) < len(p.rejected) for p in extra)
    by_reason = {r: [p for p in extra if p.reason == r] for r in LENGTH_BIAS_REASONS}
    assert len(by_reason["padded-right"]) == len(pairs)  # every pair's chosen against itself padded
    for p in by_reason["padded-right"]:
        assert p.rejected.startswith(p.chosen.rstrip()) and any(f in p.rejected for f in FILLER)
    source = {p.id: p for p in pairs}
    for p in by_reason["padded-wrong"]:
        assert p.rejected.startswith(source[p.id.rsplit("-", 1)[0]].rejected.rstrip())
    path = write_jsonl(pairs, tmp_path / "pairs.jsonl")
    anneal = read_jsonl(build_reward_anneal_pairs_task.fn(str(path), str(tmp_path / "anneal.jsonl")), PreferencePair)
    assert anneal == reward_anneal_pairs(pairs) == [*pairs, *extra]
    assert len({p.id for p in anneal}) == len(anneal)


def test_answer_pairs_put_a_records_answer_over_another_answer_to_the_same_question(tmp_path):
    """The reward model's answer pairs from real curated records (easy-vqa questions, reasoning records and
    text instructions): same question text on both sides' records, a distractor the matcher rejects,
    short answers only, in the no-think form; none from free text; the same seed draws the same pairs."""
    records = [
        *easy_vqa_source.collect(SourceSpec(name="easy-vqa", limit=300, seed=0), tmp_path).records,
        *text_instructions.collect(SourceSpec(name="text-instructions", limit=20, seed=0), tmp_path).records,
    ]
    by_id = {r.id: r for r in records}
    pairs = answer_pairs(records, 50, seed=1)
    assert len(pairs) == 50 and len({p.id for p in pairs}) == 50
    answers_to = {}
    for r in records:
        answers_to.setdefault(r.question.strip().lower(), set()).add(split_thinking(r.answer)[1].strip())
    for p in pairs:
        record = by_id[p.problem_id]
        right, distractor = (split_thinking(side)[1] for side in (p.chosen, p.rejected))
        assert p.reason == ANSWER_PAIR_REASON and p.prompt == record.question and p.media_path == record.media_path
        assert p.chosen == no_think_response(right) and p.rejected == no_think_response(distractor)
        assert right == split_thinking(record.answer)[1].strip() and len(right.split()) <= 3
        assert distractor in answers_to[record.question.strip().lower()] and not answers_match(distractor, right)
        assert record.source == "easy-vqa"  # text instructions have no short answer to contrast
    assert answer_pairs(records, 50, seed=1) == pairs != answer_pairs(records, 50, seed=2)
    assert answer_pairs(records[:1], 5) == []  # a question nobody else answers makes no pair
    # padded, the distractor side is a wrong answer made longer
    assert {p.reason for p in length_bias_pairs(pairs)} == set(LENGTH_BIAS_REASONS)

    mpo = write_jsonl(pairs[:3], tmp_path / "pairs.jsonl")
    curated = tmp_path / "records.jsonl"
    curated.write_text("".join(r.to_json() + "\n" for r in records))
    made, num_answers = build_reward_pairs_task.fn(str(mpo), str(curated), str(tmp_path / "reward.jsonl"), 10, seed=1)
    reward = read_jsonl(made, PreferencePair)
    assert reward[:3] == pairs[:3] and len(reward) == 13 and num_answers == 10
    assert all(p.reason == ANSWER_PAIR_REASON for p in reward[3:])
    # records with no short answer to contrast make no answer pair: the count says so (the flow's fallback)
    curated.write_text(records[0].to_json() + "\n")
    made, num_answers = build_reward_pairs_task.fn(str(mpo), str(curated), str(tmp_path / "none.jsonl"), 10, seed=1)
    assert read_jsonl(made, PreferencePair) == pairs[:3] and num_answers == 0
