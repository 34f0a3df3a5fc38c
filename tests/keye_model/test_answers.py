"""The one answer matcher: a table of verdicts, run through the matcher itself and through its three users
(the GSPO rule reward, LongCoT level 1 and the evaluation metric), which must all agree with the table."""

from __future__ import annotations

import easy_vqa
import pytest

from data_specs.longcot import CoTProblem, LongCoTConfig
from keye_model.answers import (
    answers_match,
    extract_answer,
    extract_choice,
    judge_answer,
    normalize_answer,
    parse_number,
    split_thinking,
)
from keye_model.rewards import RewardSample, rule_reward
from tasks.evaluation.metrics import vqa_accuracy
from tasks.generation import Generation
from tasks.longcot import check_rules, paths_from_generations

#: (response, reference, right?) grouped by the rule each row exercises.
TABLE = [
    # numbers and number words
    ("Three", "3", True),
    ("3.0", "3", True),
    ("Two.", "2", True),
    ("4", "four", True),
    ("none", "0", True),
    ("zero", "none", True),
    ("1/2", "0.5", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("50%", "0.5", True),
    ("50 percent", "50", True),
    ("1e3", "1,000", True),
    ("1,000", "1000", True),
    ("0.3333333", "1/3", True),  # relative tolerance 1e-6
    ("0.33", "1/3", False),
    ("Answer: 0.5", "1/2", True),
    ("12", "13", False),  # numbers never match fuzzily
    ("4", "3", False),
    ("-2", "2", False),
    ("4 apples", "4", False),  # a number never equals a non-number
    ("There are 3.", "three", True),  # filler dropped
    # units
    ("3 cm", "3", True),
    ("3cm", "3 centimeters", True),
    ("5 seconds", "5 s", True),
    ("$5", "5 dollars", True),
    ("3 cm", "3 m", False),
    # case, punctuation, articles, plural, typos
    ("The Circle.", "circle", True),
    ("  RED. ", "red", True),
    ("It is a circle.", "circle", True),
    ("a red circles", "red circle", True),
    ("rectangel", "rectangle", True),
    ("traingle", "triangle", True),
    ("grey", "gray", True),
    ("rectangle", "triangle", False),
    ("horse", "house", False),  # short words: no typo tolerance
    ("visible", "invisible", False),
    ("red", "blue", False),
    ("triangle", "circle", False),
    ("dark red", "red", False),  # an extra content word is a different answer
    ("red circle", "circle", False),
    ("It is a blue circle.", "circle", False),
    # yes / no variants
    ("Yes.", "yes", True),
    ("True", "yes", True),
    ("yeah", "yes", True),
    ("Correct", "yes", True),
    ("false", "no", True),
    ("Incorrect.", "no", True),
    ("Yes, there is a circle.", "yes", True),  # a yes/no reference: the first word decides
    ("No, it is not.", "no", True),
    ("no", "yes", False),
    ("yes and no", "yes", False),
    ("Yes, it is not red.", "yes", False),
    # multiple-choice letters
    ("(B)", "b", True),
    ("B.", "B", True),
    ("option b", "B", True),
    ("The answer is (C)", "C", True),
    ("(C) a dog", "C", True),
    ("A", "a", True),
    ("A dog", "A", False),  # an article, not an option
    ("(B)", "C", False),
    # think blocks and answer extraction
    ("<think>\n2+2\n</think>\n\n\\boxed{4}", "4", True),
    ("<think>\nthree sides\n</think>\n\nThe answer is triangle", "triangle", True),
    ("<think>\nit could be a circle\n</think>\n\nsquare", "circle", False),  # only the answer counts
    ("<think>\nstill going", "circle", False),  # cut off inside the block
    # negation
    ("not red", "red", False),
    ("It isn't red.", "red", False),
    ("The shape is not a circle", "circle", False),
    ("no rectangles", "rectangle", False),
    ("not red", "not red", True),
    # empty answers
    ("", "blue", False),
    ("   ", "blue", False),
    ("<think>\nwhy\n</think>\n\n", "blue", False),
    ("Answer:", "blue", False),
]


@pytest.mark.parametrize(("response", "reference", "right"), TABLE)
def test_table(response, reference, right):
    verdict = judge_answer(response, reference)
    assert verdict.match is right and verdict.reason
    assert answers_match(response, reference) is right


def _longcot_level1(response: str, reference: str) -> bool | None:
    """LongCoT's level-1 rules on one generated path; a bare answer gets a think block, as LongCoT requires."""
    text = response
    if not response.lstrip().startswith("<think>"):
        text = f"<think>\nlook at the image\n</think>\n\n{response}"
    problem = CoTProblem(
        id="p", record_id="r", source="table", task="vqa", category="vqa", question="What is it?", reference=reference
    )
    generation = Generation(text=text, token_logprobs=[], tokens=[], finish_reason="stop")
    (path,) = paths_from_generations(problem, [generation])
    return check_rules(problem, path, LongCoTConfig()).answer_correct


def test_three_users_agree_with_the_table():
    """The RL reward, LongCoT level 1 and evaluation give the table's verdict on every row."""
    disagreements = []
    for i, (response, reference, right) in enumerate(TABLE):
        reward = rule_reward(RewardSample(id=f"row-{i}", query="What is it?", response=response, reference=reference))
        got = {
            "rl_reward": reward.score == 1.0,
            "longcot_level1": _longcot_level1(response, reference),
            "evaluation": vqa_accuracy([response], [reference]) == 1.0,
        }
        disagreements += [
            f"{name}: {response!r} vs {reference!r} -> {value}, table says {right}"
            for name, value in got.items()
            if value is not right
        ]
    assert not disagreements, disagreements


def test_easy_vqa_vocabulary_never_confused():
    """Every easy-vqa answer (shapes, colours, yes/no) matches itself and its sentence form, never another
    answer, and never its own negation."""
    vocabulary = sorted(set(easy_vqa.get_answers()))
    assert {"circle", "red", "yes"} <= set(vocabulary)
    for want in vocabulary:
        assert answers_match(want.upper(), want) and answers_match(f"It is {want}.", want)
        assert not answers_match(f"not {want}", want)
        confused = [got for got in vocabulary if got != want and answers_match(got, want)]
        assert not confused, f"{confused} judged equal to {want!r}"


def test_several_references_and_reasons():
    assert answers_match("the Circle", ["triangle", "circle"])
    assert not answers_match("square", ["triangle", "circle"])
    assert "1 words vs 2" in judge_answer("red", "dark red").reason
    assert judge_answer("12", "13").reason == "number '12' != '13'"
    with pytest.raises(ValueError, match="no reference answer"):
        judge_answer("red", [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two Circles!", "2 circles"),
        ("  RED. ", "red"),
        ("an apple", "apple"),
        ("3.5", "3.5"),  # a decimal point is not punctuation
        ("none", "0"),
        ("twenty-one", "20 1"),  # hyphen splits; only single number words map
        ("yes, it is", "yes"),  # filler dropped (evaluation's own normalizer kept "yes it is")
        ("The (B) Circle.", "b circle"),
        (" $1,234$ ", "1234"),
        ("\\frac{1}{2}", "1/2"),
        ("(A)", "a"),  # a lone option letter, not an article
        ("Option B", "b"),
        ("(-3)", "-3"),
        ("1e-3", "1e-3"),
        ("50 percent", "50%"),
        ("It isn't red", "not red"),
        ("Yes, that is correct.", "yes"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_parse_number_and_extract_answer():
    assert parse_number("3/4") == {0.75}
    assert parse_number("50%") == {50.0, 0.5}
    assert parse_number("1e3") == {1000.0}
    assert parse_number("three") == {3.0} and parse_number("4 cm") == {4.0}
    assert parse_number("1/0") is None and parse_number("blue") is None and parse_number("4 apples") is None
    assert extract_answer("so \\boxed{x^{2}} done") == "x^{2}"
    assert extract_answer("<think>\nhm\n</think>\n\nThe final answer is: blue") == "blue"
    assert split_thinking("<think>\nbecause\n</think>\n\nblue") == ("because", "blue")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (B)", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("(C) a dog", "C"),
        ("D) four", "D"),
        ("Answer: d", "D"),
        ("The best answer is: c.", "C"),
        ("I think it is C", "C"),
        ("Option C is correct", "C"),
        ("option c", "C"),
        ("<think>A or B?</think>D", "D"),
        ("the answer is a dog", None),  # article, not an option
        ("A dog runs across.", None),
        ("E", None),  # not among four options
        ("no idea", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_extract_choice_by_option_text():
    options = ["A. a blue car", "B. a red car", "C. a bus"]
    assert extract_choice("A red car.", 3, options) == "B"
    assert extract_choice("a truck", 3, options) is None


@pytest.mark.parametrize(
    ("thinking", "text"),
    [
        ("because\nit is blue", "<think>\nbecause\nit is blue\n</think>\n\nblue"),
        ("", "<think>\n\n</think>\n\nblue"),  # the /no_think form
        (None, "blue"),
    ],
)
def test_join_thinking_is_the_inverse_of_split_thinking(thinking, text):
    from keye_model.answers import join_thinking, split_thinking

    assert join_thinking(thinking, " blue ") == text
    assert split_thinking(text) == (thinking, "blue")
