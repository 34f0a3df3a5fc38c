"""Rule rewards, constraints and the weighted combination, each on hand-written cases.

Answer correctness has its own table in tests/keye_model/test_answers.py, which also runs through ``rule_reward``.
"""

from __future__ import annotations

import pytest

from keye_model import rewards as rw
from keye_model.rewards import Constraint, RewardFunction, RewardSample


@pytest.mark.parametrize(
    ("response", "thinking", "score"),
    [
        ("<think>\nbecause red\n</think>\n\nblue", True, 1.0),
        ("blue", True, 0.0),  # no block
        ("<think>\n\n</think>\n\nblue", True, 0.0),  # empty reasoning
        ("<think>\nwhy\n</think>\n\n", True, 0.0),  # empty answer
        ("<think>a</think><think>b</think> blue", True, 0.0),  # two blocks
        ("<think>\nwhy, cut off", True, 0.0),  # unclosed
        ("blue", False, 1.0),
        ("<think>\nwhy\n</think>\n\nblue", False, 0.0),  # /no_think yet thinks
        ("  ", False, 0.0),
    ],
)
def test_think_format(response, thinking, score):
    result = rw.think_format(response, thinking=thinking)
    assert result.score == score and result.reason


@pytest.mark.parametrize(
    ("kind", "params", "text", "score"),
    [
        ("json_format", {}, '{"a": [1, 2]}', 1.0),
        ("json_format", {}, 'Here:\n```json\n{"a": 1}\n```', 1.0),
        ("json_format", {}, '{"a": 1,}', 0.0),
        ("json_format", {}, "42", 0.0),
        ("markdown_heading", {}, "intro\n## Plan\ntext", 1.0),
        ("markdown_heading", {}, "#hashtag", 0.0),
        ("markdown_list", {}, "- one\n- two", 1.0),
        ("markdown_list", {"min_items": 3}, "1. one\n2. two", 0.0),
        ("code_block", {}, "```python\nprint(1)\n```", 1.0),
        ("code_block", {"language": "python"}, "```js\nx\n```", 0.0),
        ("code_block", {}, "```python\nprint(1)", 0.0),  # unclosed fence
        ("include_keywords", {"keywords": ["Circle", "red"]}, "A red circle.", 1.0),
        ("include_keywords", {"keywords": ["red"]}, "A reddish circle.", 0.0),  # whole words only
        ("exclude_keywords", {"keywords": ["blue"]}, "Blue sky", 0.0),
        ("exclude_keywords", {"keywords": ["blue"]}, "red sky", 1.0),
        ("ends_with_punctuation", {}, "Done!  ", 1.0),
        ("ends_with_punctuation", {"marks": "."}, "Done!", 0.0),
        ("starts_with", {"prefix": "Sure"}, "  Sure, here", 1.0),
        ("max_words", {"limit": 3}, "one two three", 1.0),
        ("max_words", {"limit": 3}, "one two three four", 0.0),
        ("min_words", {"limit": 2}, "one", 0.0),
        ("all_lowercase", {}, "all small, 123", 1.0),
        ("all_lowercase", {}, "Not", 0.0),
        ("all_uppercase", {}, "LOUD!", 1.0),
        ("no_commas", {}, "a, b", 0.0),
    ],
)
def test_constraint_registry(kind, params, text, score):
    assert Constraint(kind=kind, params=params).check(text).score == score


def test_constraint_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown constraint kind 'shout'"):
        Constraint(kind="shout")
    with pytest.raises(ValueError, match="max_words: bad params"):
        Constraint(kind="max_words", params={"limt": 3})
    both = (Constraint(kind="all_lowercase"), Constraint(kind="max_words", params={"limit": 1}))
    result = rw.check_constraints("two words", both)
    assert result.score == 0.5 and "max_words: 2 words > 1" in result.reason


def sample(response: str, **kw) -> RewardSample:
    return RewardSample(id="p1", query="what colour?", response=response, **kw)


def test_rule_reward_gates_by_format_and_averages_checks():
    lower = (Constraint(kind="all_lowercase"), Constraint(kind="ends_with_punctuation"))
    good = sample("<think>\nsky\n</think>\n\nblue", reference="Blue", thinking=True, constraints=lower)
    # format 1 * mean(answer 1, constraints 0.5 (lowercase ok, no final punctuation)) = 0.75
    assert rw.rule_reward(good).score == pytest.approx(0.75)
    bad_format = sample("blue.", reference="Blue", thinking=True, constraints=lower)
    assert rw.rule_reward(bad_format).score == 0.0
    assert rw.rule_reward(sample("blue", thinking=False)).score == 1.0  # format only
    assert rw.rule_reward(sample("blue")) is None  # nothing to check


def test_reward_function_weights_and_parts():
    judge_calls = []

    def judge(s: RewardSample) -> float:
        judge_calls.append(s.id)
        return 0.5

    fn = RewardFunction(
        weights=(("rule", 0.5), ("judge", 0.25), ("reward_model", 0.25)), judge=judge, reward_model=lambda s: 0.0
    )
    out = fn(sample("blue", reference="blue", thinking=False))
    assert out.parts == {"rule": 1.0, "judge": 0.5, "reward_model": 0.0}
    assert out.total == pytest.approx(0.5 * 1 + 0.25 * 0.5 + 0.25 * 0)  # weights sum to 1
    assert judge_calls == ["p1"] and "answer: exact match" in out.reason
    # Rule not applicable (no reference, no constraints, no think mode): renormalize over the rest.
    out = fn(sample("blue"))
    assert out.parts == {"judge": 0.5, "reward_model": 0.0} and out.total == pytest.approx(0.25)


def test_reward_function_rule_only_correct_is_exactly_one():
    fn = RewardFunction(weights=(("rule", 0.7),))
    assert fn(sample("blue", reference="blue", thinking=False)).total == 1.0


def test_reward_function_errors():
    with pytest.raises(ValueError, match="no judge callable"):
        RewardFunction(weights=(("rule", 1.0), ("judge", 1.0)))
    with pytest.raises(ValueError, match="distinct names"):
        RewardFunction(weights=(("rules", 1.0),))
    with pytest.raises(ValueError, match="at least one > 0"):
        RewardFunction(weights=(("rule", 0.0),))
    fn = RewardFunction(weights=(("reward_model", 1.0),), reward_model=lambda s: 1.5)
    with pytest.raises(ValueError, match="sample p1: reward_model score 1.5 is outside"):
        fn(sample("blue"))
    with pytest.raises(ValueError, match="sample p1: no reward source applies"):
        RewardFunction()(sample("blue"))


def test_versus_reference_averages_both_orders():
    # A judge with position bias: +0.2 for whatever is shown first, else prefers the longer answer.
    def prefer(query, a, b):
        return min(1.0, (0.6 if len(a) > len(b) else 0.2) + 0.2)

    score = rw.versus_reference(prefer)
    # forward (long response first) 0.8, backward (reference first, shorter) 0.4 -> (0.8 + 1 - 0.4) / 2
    assert score(sample("a long answer", reference="short")) == pytest.approx(0.7)
    assert score(sample("blue")) is None
