"""LongCoT steps 1, 2, 3 and 5 on easy-vqa records (real questions and images) and hand-written paths."""

from __future__ import annotations

import dataclasses

import easy_vqa
import pytest

from data_specs.longcot import CoTProblem, CoTSample, LongCoTConfig, QualityTier, TrainingFeedback, read_jsonl
from data_specs.schemas import Record
from tasks.generation import Generation, RuleJudge, TransformersGenerator, write_tiny_causal_lm
from tasks.longcot import (
    assess_quality,
    assess_quality_task,
    collect_problems,
    collect_problems_task,
    generate_paths,
    path_confidence,
    paths_from_generations,
    repeated_ngram_fraction,
    score_samples,
    split_response,
    update_scores,
)

CONFIG = LongCoTConfig(num_paths=3, max_new_tokens=12, enhance=False)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    images = easy_vqa.get_train_image_paths()
    out = [
        Record(
            id=f"easy-vqa-{i}",
            source="easy-vqa",
            modality="image",
            task="vqa",
            question=q,
            answer=a,
            media_path=images[image_ids[i]],
        )
        for i, (q, a) in enumerate(zip(questions[:6], answers[:6]))
    ]
    # Every easy-vqa image holds exactly one shape: a real counting question with a known answer.
    out.append(
        Record(
            id="easy-vqa-count-0",
            source="easy-vqa",
            modality="image",
            task="counting",
            question="How many shapes are in the image?",
            answer="1",
            media_path=images[image_ids[0]],
        )
    )
    out.append(
        Record(
            id="easy-vqa-caption-0",
            source="easy-vqa",
            modality="image",
            task="caption",
            question="Describe.",
            answer=f"A {answers[0]} shape.",
            media_path=images[image_ids[0]],
        )
    )
    out.append(
        Record(
            id="easy-vqa-dup",
            source="easy-vqa",
            modality="image",
            task="vqa",
            question=questions[0].upper(),
            answer=answers[0],
            media_path=images[image_ids[0]],
        )
    )
    return out


def test_split_response_and_confidence():
    assert split_response(" <think>a\nb</think> Answer: blue ") == ("a\nb", "blue")
    assert split_response("blue") == (None, None)
    assert split_response("<think>a</think>") == ("a", None)
    gen = Generation(text="x", token_logprobs=[-1, -1, -3, -2], tokens=["a", "b\n", "c", "d"], finish_reason="stop")
    assert path_confidence(gen) == (-1.75, -2.5)  # the docstring's worked example
    assert path_confidence(dataclasses.replace(gen, token_logprobs=[], tokens=[])) == (None, None)
    assert (
        repeated_ngram_fraction("the shape is blue " * 5) > 0.5 > repeated_ngram_fraction("the shape is blue and round")
    )


def test_collect_problems_selects_and_enhances(records):
    plain = collect_problems(records, CONFIG)
    assert {p.record_id for p in plain} == {f"easy-vqa-{i}" for i in range(6)} | {
        "easy-vqa-count-0"
    }  # no caption, no dup
    enhanced = collect_problems(records, dataclasses.replace(CONFIG, enhance=True))
    assert enhanced == collect_problems(records, dataclasses.replace(CONFIG, enhance=True)), (
        "rule choice is deterministic"
    )
    for p in enhanced:
        assert p.enhancement in ("justify", "locate_first", "compare_count") and p.question != p.original_question
        assert p.id.endswith(p.enhancement.replace("_", "-")) and p.meta["original_answer"]
    # The rule is picked by a hash of (seed, record id): some seed gives the counting twist.
    count = next(
        p
        for seed in range(20)
        for p in collect_problems(records, dataclasses.replace(CONFIG, enhance=True, seed=seed))
        if p.record_id == "easy-vqa-count-0" and p.enhancement == "compare_count"
    )
    assert count.category == "counting" and count.original_question == "How many shapes are in the image?"
    assert "greater than 0" in count.question and count.reference == "yes"  # 1 is odd: threshold 0


def test_generate_paths_with_the_tiny_model(records, tmp_path):
    questions, _, _ = easy_vqa.get_train_questions()
    generator = TransformersGenerator(write_tiny_causal_lm(tmp_path / "lm", sorted(set(questions))[:200]), device="cpu")
    problems = collect_problems(records, CONFIG)[:2]
    paths = generate_paths(problems, generator, CONFIG)
    assert [p.id for p in paths] == [f"{pr.id}-p{k}" for pr in problems for k in range(3)]
    for path in paths:
        assert path.mean_logprob is not None and path.step_min_logprob <= path.mean_logprob + 1e-9
        assert 0 < path.num_tokens <= CONFIG.max_new_tokens and path.generator.startswith("transformers:")
        assert path.thinking is None and path.agreement == 0.0  # random weights do not write <think>


def _problem(records, index=0) -> CoTProblem:
    return collect_problems(records, CONFIG)[index]


def _paths(problem, texts):
    gens = [Generation(text=t, token_logprobs=[-0.5] * 8, tokens=["w"] * 8, finish_reason="stop") for t in texts]
    return paths_from_generations(problem, gens, "hand")


def test_assess_quality_tiers_and_borderline(records):
    problem = _problem(records)  # "What is the blue shape?" style question with a real reference
    ref = problem.reference
    texts = [
        f"<think>I look at the image.\nThe shape in the image is a {ref}.\nSo the answer is {ref}.</think>{ref}",  # A
        f"<think>The shape in the image is a {ref}, clearly.</think>{ref}",  # one step: B
        "<think>I look at the image.\nThe shape looks odd.\nI guess.</think>"
        + ("triangle" if ref != "triangle" else "circle"),
        f"{ref}",  # malformed
        "<think>" + "the shape is the shape " * 20 + f"</think>{ref}",  # repetitive
    ]
    kept, rejected = assess_quality([problem], _paths(problem, texts), RuleJudge(), CONFIG)
    tiers = {s.id.rsplit("-", 1)[1]: s.tier for s in kept + rejected}
    assert tiers == {
        "p0": QualityTier.A,
        "p1": QualityTier.B,
        "p2": QualityTier.C,
        "p3": QualityTier.C,
        "p4": QualityTier.C,
    }
    reasons = {s.id.rsplit("-", 1)[1]: " ".join(s.reasons) for s in rejected}
    assert (
        "does not match reference" in reasons["p2"]
        and "not '<think>" in reasons["p3"]
        and "repetitive" in reasons["p4"]
    )
    a, b = kept
    assert b.borderline and a.path.agreement == 0.6
    assert not a.borderline  # judge 5/5/5, agreement 0.6 >= 0.5
    assert a.verdict.judge == "rule-judge" and rejected[0].verdict.scores is None  # C paths never reach the judge


def test_keeps_diverse_confident_paths(records):
    problem = _problem(records)
    ref = problem.reference
    texts = [
        f"<think>I look at the blue shape.\nIt has four corners.\nSo it is a {ref}.</think>{ref}",
        f"<think>I look at the blue shape.\nIt has four corners.\nSo it is a {ref}!</think>{ref}",  # near-duplicate
        f"<think>The blue shape is the only shape.\nIts sides are straight and pairwise equal.\nA {ref}.</think>{ref}",
        f"<think>Find the blue shape first.\nCount its corners: four.\nThat makes it a {ref}.</think>{ref}",
    ]
    gens = [
        Generation(text=t, token_logprobs=[lp] * 4, tokens=["w"] * 4, finish_reason="stop")
        for t, lp in zip(texts, (-0.5, -0.1, -0.9, -0.2))
    ]
    paths = paths_from_generations(problem, gens)
    kept, rejected = assess_quality(
        [problem], paths, RuleJudge(), dataclasses.replace(CONFIG, max_kept_paths_per_problem=2)
    )
    assert [s.id[-2:] for s in kept] == ["p1", "p3"]  # most confident first, p0 is p1's twin
    why = {s.id[-2:]: s.reasons[-1] for s in rejected}
    assert why == {"p0": f"near-duplicate of {problem.id}-p1", "p2": "surplus: less confident than the kept paths"}
    assert all(s.tier is QualityTier.A for s in rejected)  # surplus is not discarded as bad


def test_score_samples_and_feedback(records):
    problem = _problem(records)
    text = (
        f"<think>I look at the image.\nThe shape in the image is a {problem.reference}.\nDone.</think>"
        f"{problem.reference}"
    )
    kept, _ = assess_quality([problem], _paths(problem, [text, text]), RuleJudge(), CONFIG)
    sample = kept[0]
    [unprobed] = score_samples([sample], CONFIG)
    assert unprobed.quality_score == 4 and unprobed.features["image_dependent"] is None  # multi-step + confident
    [blind_fails] = score_samples([sample], CONFIG, {problem.id: 0.0})
    assert blind_fails.quality_score == 5 and blind_fails.replay_weight == 3.0
    [blind_right] = score_samples([sample], CONFIG, {problem.id: 0.75})
    assert blind_right.quality_score == 1 and blind_right.replay_weight == 0.25
    assert "answerable without the image" in blind_right.score_history[-1]["why"]

    mastered, hard, unsolved = (dataclasses.replace(blind_fails, id=i) for i in ("m", "h", "u"))
    feedback = {
        "m": TrainingFeedback(loss=0.5, rl_pass_rate=1.0),
        "h": TrainingFeedback(loss=3.0, rl_pass_rate=0.5),
        "u": TrainingFeedback(loss=1.0, rl_pass_rate=0.0),
    }
    out = {s.id: s for s in update_scores([mastered, hard, unsolved, blind_right], feedback, CONFIG)}
    assert out["m"].quality_score == 4 and out["m"].replay_weight == 2.0 and len(out["m"].score_history) == 2
    assert out["h"].quality_score == 5 and "hard but learnable" in out["h"].score_history[-1]["why"]
    assert out["u"].quality_score == 5 and out["u"].features["needs_review"]
    assert out[blind_right.id] is blind_right  # no feedback, untouched


def test_tasks_round_trip_jsonl(records, tmp_path):
    records_path = tmp_path / "records.jsonl"
    records_path.write_text("".join(r.to_json() + "\n" for r in records))
    problems_path = collect_problems_task.fn(str(records_path), str(tmp_path / "problems.jsonl"), CONFIG)
    problems = read_jsonl(problems_path, CoTProblem)
    assert problems == collect_problems(records, CONFIG)
    problem = problems[0]
    paths = _paths(
        problem,
        [
            f"<think>I find the blue shape.\nIt has four sides.\nIt is a {problem.reference}.</think>"
            f"{problem.reference}",
            "nope",
        ],
    )
    paths_path = tmp_path / "paths.jsonl"
    paths_path.write_text("".join(p.to_json() + "\n" for p in paths))
    kept_path, rejects_path = assess_quality_task.fn(
        problems_path, str(paths_path), str(tmp_path / "kept.jsonl"), str(tmp_path / "rejects.jsonl"), CONFIG
    )
    kept, rejected = read_jsonl(kept_path, CoTSample), read_jsonl(rejects_path, CoTSample)
    assert [s.tier for s in kept] == [QualityTier.A] and [s.tier for s in rejected] == [QualityTier.C]
    assert kept == assess_quality(problems, paths, RuleJudge(), CONFIG)[0], "JSONL round trip is lossless"
    (tmp_path / "bad.jsonl").write_text(kept[0].to_json() + '\n{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a CoTSample"):
        read_jsonl(tmp_path / "bad.jsonl", CoTSample)


def test_the_level2_judge_is_the_configured_server_else_the_rule_judge(monkeypatch):
    from keye_model.reference_judge import API_KEY_ENV_ENV, MODEL_ENV, URL_ENV
    from tasks.longcot import judge_config_from_env

    monkeypatch.delenv(URL_ENV, raising=False)
    assert judge_config_from_env() is None
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(MODEL_ENV, "judge-7b")
    monkeypatch.setenv(API_KEY_ENV_ENV, "MY_KEY")
    config = judge_config_from_env()
    assert (config.kind, config.base_url, config.model, config.api_key_env) == (
        "openai",
        "http://127.0.0.1:9",
        "judge-7b",
        "MY_KEY",
    )
