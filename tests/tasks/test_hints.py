"""Progressive hints from each problem's facts: L1..L4 never state the answer, L5 is the solution.

The check of "states the answer" is the one answer matcher (``keye_model.answers``) run over every word
window of a hint (``tasks.hints.states_answer``), here over every hint of every RL prompt the easy-vqa
source gives (the whole picked set, all question kinds).
"""

from __future__ import annotations

import pytest

from data_specs.schemas import Record
from keye_model.answers import answers_match
from tasks.hints import HINTS, NEUTRAL_HINTS, hint_kind, record_facts, rule_hints, states_answer
from tasks.posttrain_data import rl_prompt_records
from tasks.sources import SourceSpec, collect_records


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> list[Record]:
    records = collect_records(SourceSpec(name="easy-vqa", limit=400), tmp_path_factory.mktemp("src")).records
    return rl_prompt_records(records)


def test_no_hint_below_l5_states_the_answer_and_l5_solves(prompts):
    kinds = {hint_kind(p) for p in prompts}
    assert {"shape", "color", "presence"} <= kinds  # every easy-vqa question form is covered
    for prompt in prompts:
        hints = prompt.meta["hints"]
        assert len(hints) == 5, prompt.id
        for level, hint in enumerate(hints[:4], start=1):
            words = hint.split()
            windows = [" ".join(words[i : i + n]) for n in range(1, 4) for i in range(len(words) - n + 1)]
            leaked = [w for w in windows if answers_match(w, prompt.answer)]
            assert not leaked, f"{prompt.id} L{level} {hint!r} states {prompt.answer!r}: {leaked}"
        assert hints[4].rstrip(".").endswith(f"the answer is {prompt.answer}")


def test_hints_come_from_the_images_facts(prompts):
    questions = [p for p in prompts if p.task == "vqa"]
    with_facts = [p for p in questions if {"shape", "color"} <= record_facts(p).keys()]
    assert len(with_facts) > 0.8 * len(questions)  # most images: both facts, read off their questions
    for prompt in with_facts:
        facts = record_facts(prompt)
        hints = prompt.meta["hints"]
        assert f"The image shows a {facts['color']} {facts['shape']}, so the answer is {prompt.answer}." == hints[4]
        if hint_kind(prompt) == "color":
            assert facts["shape"] in hints[0]  # L1 says which shape to look at, not its colour
        if hint_kind(prompt) == "shape":
            assert facts["color"] in hints[0]
    # hints differ between images (facts), not only in L5
    color_prompts = [p for p in with_facts if hint_kind(p) == "color"]
    assert len({p.meta["hints"][3] for p in color_prompts}) > 1


def test_states_answer_uses_the_matcher():
    assert states_answer("Its outline has zero corners.", "0")  # number words are numbers
    assert states_answer("It has no corners.", "no")  # a window starting with "no" says no
    assert states_answer("The fill is Red, like a tomato.", "red")
    assert not states_answer("Look at the red shape.", "circle")
    assert not states_answer("Count the corners of the outline.", "yes")


def test_fixed_hints_never_name_an_easy_vqa_answer_and_leaks_are_replaced():
    import easy_vqa

    for kind in ("shape", "color", "presence"):
        for hint in HINTS[kind]:
            assert not [a for a in easy_vqa.get_answers() if states_answer(hint, a)], (kind, hint)
    # a record without facts whose answer a fixed hint happens to contain gets a neutral hint there
    record = Record(id="x", source="text", modality="text", task="vqa", question="what is it?", answer="image")
    hints = rule_hints(record)
    assert len(hints) == 5 and hints[:2] == NEUTRAL_HINTS[:1] * 2  # L1, L2 of "general" say "image"
    assert hints[2:4] == HINTS["general"][2:4]


def test_given_hints_that_state_the_answer_are_refused(prompts):
    record = prompts[0]
    with pytest.raises(ValueError, match=f"record {record.id}: hint levels \\[2\\] state the answer"):
        rl_prompt_records([record], {record.id: ["look", f"it is {record.answer}", "c", "d", "e"]})
