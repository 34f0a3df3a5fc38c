"""The judge's one verdict rule, its RL reward (format + outcome), and its RL prompts."""

from __future__ import annotations

import pytest

from data_specs.longcot import REWARD_MODEL_DIMENSIONS
from keye_model.rewards import RewardSample
from keye_model.training.examples import Example, judge_assessment, judge_conversations, judge_rl_prompts
from keye_model.training.judge import as_judged_response, parse_verdict, verdict_reward


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        ("A", "A"),
        (" B.\n", "B"),
        ("<think>\nCorrectness: A is right.\n</think>\n\nA", "A"),
        ("<think>\n\n</think>\n\nB", "B"),
        ("Response A", None),
        ("a", None),
        ("AB", None),
        ("", None),
        ("<think>\nCorrectness: A is right", None),  # cut off inside the assessment
        ("<think>\nB\n</think>\n\n", None),  # the letter only inside the assessment
    ],
)
def test_one_rule_reads_the_verdict(response, verdict):
    assert parse_verdict(response) == verdict


def _sample(response: str, reference: str, thinking: bool) -> RewardSample:
    return RewardSample(id="p0", query="Which is better?", response=response, reference=reference, thinking=thinking)


@pytest.mark.parametrize(
    ("response", "thinking", "total"),
    [
        ("A", False, 1.0),  # no_think: the verdict alone, right
        ("B", False, 0.5),  # well formed, wrong
        ("A is better", False, 0.0),  # no parseable verdict: neither format nor outcome
        ("<think>\nCorrectness: A.\n</think>\n\nA", True, 1.0),  # think: assessment then verdict, right
        ("<think>\nCorrectness: A.\n</think>\n\nA", False, 0.5),  # right, but think tags in a no_think answer
        ("A", True, 0.5),  # right, but no assessment in think mode
        ("<think>\nI like it.\n</think>\n\nA", True, 0.5),  # right, but the "assessment" weighs no dimension
        ("<think>\nCorrectness: A.\n</think>\n\nB", True, 0.5),
        ("<think>\nCorrectness: A.", True, 0.0),  # cut off before the verdict
    ],
)
def test_verdict_reward_is_format_plus_outcome(response, thinking, total):
    reward = verdict_reward(_sample(response, "A", thinking))
    assert reward.total == total
    assert reward.total == (reward.parts["format"] + reward.parts["outcome"]) / 2


def test_verdict_reward_needs_a_letter_and_a_mode():
    with pytest.raises(ValueError, match="judge prompt p0"):
        verdict_reward(_sample("A", "yes", True))
    with pytest.raises(ValueError, match="judge prompt p0"):
        verdict_reward(RewardSample(id="p0", query="q", response="A", reference="A"))


def _pair(i: int, reason: str = "correct-vs-wrong") -> Example:
    record = {
        "question": f"what shape is item {i}?",
        "answer": "circle",
        "task": "reasoning",
        "meta": {"chosen": "circle", "rejected": "triangle, a long and wrong answer", "reason": reason},
    }
    return Example(sample_id=f"pair-{i}", record=record, user_parts=[{"type": "text", "text": record["question"]}])


def test_rl_prompts_ask_each_pair_in_both_orders_and_name_the_better_letter():
    prompts = [judge_rl_prompts(_pair(i)) for i in range(40)]
    for i, (first, second) in enumerate(prompts):
        # one pair: both orders in one mode, so a step rewards "A" and "B" equally often
        assert (first.reference, second.reference) == ("A", "B") and first.thinking == second.thinking
        assert (first.id, second.id) == (f"pair-{i}-A", f"pair-{i}-B")
    flat = [p for pair in prompts for p in pair]
    assert {p.thinking for p in flat} == {False, True}  # the mode varies across pairs
    for p in flat:
        text = p.conversation[-1]["content"][-1]["text"]
        shown_first = text.split("Response A: ")[1].split("\nResponse B")[0]
        assert (shown_first == "circle") == (p.reference == "A")
        assert text.endswith("/think") == p.thinking and p.think_mode == p.thinking
    assert judge_rl_prompts(_pair(3)) == judge_rl_prompts(_pair(3))  # the same questions on every pass


@pytest.mark.parametrize("reason", ["correct-vs-wrong", "score-gap", "padded-right", "padded-wrong", "other"])
def test_think_assessment_covers_the_nine_dimensions_and_names_the_better(reason):
    text = judge_assessment({"reason": reason}, "B").lower()
    assert all(d in text for d in REWARD_MODEL_DIMENSIONS), text
    assert "response b" in text
    think = [c for c in judge_conversations(_pair(0, reason)) if "reasoning_content" in c[1]]
    assert [c[1]["content"] for c in think] == ["A", "B"]


def test_judged_responses_take_the_training_form():
    assert as_judged_response("circle") == "<think>\n\n</think>\n\ncircle"
    assert as_judged_response("<think>\nwhy\n</think>\n\ncircle") == "<think>\nwhy\n</think>\n\ncircle"
