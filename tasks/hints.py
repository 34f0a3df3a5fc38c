"""Progressive hints L1..L5 for RL prompts (SPEC.md section 4, progressive hint sampling).

L1 a concept or what to observe (no method), L2 a strategy, L3 a tool or rule, L4 the first concrete
step, L5 the complete solution. L1..L4 never state the answer: ``states_answer`` (the one answer
matcher, ``keye_model.answers``, run over every word window of a hint) decides that, and
``rl_prompt_records`` enforces it.

Where the data set knows the facts of a problem's image (easy-vqa: its shape and its colour, read off
every question about the same image, ``record_facts``), the hints are built from them: for "what color
is the triangle?" on a red triangle, L1 names the shape to look at, L4 describes the fill without
naming it ("the colour of a ripe tomato"), and L5 is the solution "The image shows a red triangle, so
the answer is red." Other problems get the fixed hints of their question kind (``HINTS``), the same whatever the answer.
"""

from __future__ import annotations

import functools
import logging
import re

from data_specs.schemas import Record
from keye_model.answers import answers_match, extract_answer, normalize_answer, parse_number

log = logging.getLogger(__name__)

#: Hints L1..L4 per question kind (used where no facts are known): none names a possible answer.
HINTS: dict[str, tuple[str, str, str, str]] = {
    "shape": (
        "Look at the shape's outline: are its sides straight or curved, and does it have corners?",
        "Compare the outline with each candidate shape in turn and rule out those that do not fit.",
        "A flat shape's name follows from how many corners it has and whether its sides are straight.",
        "First find the shape the question asks about, then count its corners.",
    ),
    "color": (
        "Look at the colour the shape is filled with, not at the background.",
        "Compare the fill with the basic colour names and keep the closest one.",
        "Judge the hue first, then how light or dark the fill is.",
        "First find the shape, then look at the middle of its fill, away from its edges.",
    ),
    "presence": (
        "The answer turns on whether an object in the image has every property the question names.",
        "Discuss by cases: list what the image shows, then check each item against the description.",
        "A question with a negation in it is answered the opposite way from the same question without it.",
        "First list every object in the image with its colour and its shape.",
    ),
    "counting": (
        "Every object of the kind asked about counts once, whatever its size or position.",
        "Scan the image in a fixed order, left to right and top to bottom, so nothing is missed or doubled.",
        "Keep a running tally and mark each object as soon as it is counted.",
        "First find the top-left matching object and start the tally there.",
    ),
    "temporal": (
        "The question is about when something happens: watch how the video changes over time.",
        "Find the frames where the scene or event in question starts and where it ends.",
        "Each frame carries a timestamp; the answer is given in seconds.",
        "First go through the frames in order and note the timestamp of every scene change.",
    ),
    "ocr": (
        "The answer is written in the image.",
        "Locate the text region the question refers to before reading anything.",
        "Read character by character and watch for look-alikes such as 0 and O, 1 and l.",
        "First find the line of text the question refers to.",
    ),
    "grounding": (
        "The question refers to one particular object; where it is matters as much as what it is.",
        "Find every candidate object, then keep the one that matches every word of the description.",
        "Give positions relative to the whole image, from its top-left corner.",
        "First list the objects that could match the description.",
    ),
    "math": (
        "Identify the quantities the problem gives and the one it asks for.",
        "Break the problem into smaller steps and solve them one at a time.",
        "Write the relations between the quantities as equations before computing.",
        "First write down the known values and name the unknown.",
    ),
    "general": (
        "Look closely at the part of the image the question is about.",
        "Rule out the answers that contradict what the image shows.",
        "Check your answer against every detail the question mentions.",
        "First restate in your own words what the question asks for.",
    ),
}

#: L4 for a shape question: the outline of each easy-vqa shape, described without its name.
OUTLINES = {
    "circle": "Its outline curves all the way round and has zero corners.",
    "triangle": "Its outline has three straight sides that meet at three corners.",
    "rectangle": "Its outline has four straight sides that meet at four right angles.",
}
#: L4 for a colour question: each easy-vqa fill colour, described without its name.
LOOKS = {
    "red": "Its fill is the colour of a ripe tomato.",
    "green": "Its fill is the colour of fresh grass.",
    "blue": "Its fill is the colour of a clear sky at noon.",
    "yellow": "Its fill is the colour of a lemon.",
    "black": "Its fill is as dark as a colour can be, like coal.",
    "gray": "Its fill is the colour of ash or of rain clouds, between white and the darkest colour.",
    "teal": "Its fill is the colour of deep sea water, between the colour of the sky and that of grass.",
    "brown": "Its fill is the colour of chocolate or of tree bark.",
}
#: The fill colours easy-vqa draws.
COLORS = tuple(LOOKS)
#: Stand-ins for a fixed hint that happens to state a record's answer, tried in order.
NEUTRAL_HINTS = ("Take another careful look before answering.", "Think again, step by step.")
_YES_NO_START = re.compile(r"^(is|are|does|do|did|can|was|were|has|have)\b", re.IGNORECASE)


def hint_kind(record: Record) -> str:
    """Which ``HINTS`` entry fits a record: by task, then by the question's form.

    ``what is the blue shape?`` -> shape, ``what color is the circle?`` -> color, ``is there not a red
    circle?`` -> presence, ``how many ...`` -> counting; reasoning with a numeric answer -> math.
    """
    question = record.question.strip().lower()
    if record.task == "counting" or question.startswith("how many"):
        return "counting"
    if record.task == "temporal_localization":
        return "temporal"
    if record.task in ("ocr", "grounding"):
        return record.task
    if record.task == "reasoning":
        return "math" if parse_number(record.answer) is not None else "general"
    if _YES_NO_START.match(question):
        return "presence"
    if "color" in question or "colour" in question:
        return "color"
    if "shape" in question:
        return "shape"
    return "general"


def question_facts(question: str, answer: str) -> dict[str, str]:
    """What one easy-vqa question and its answer say about the image's ``shape`` and ``color``.

    "what color is the circle?" / red -> both; "is there not a blue shape?" / no -> color blue;
    "does the image contain a triangle?" / no -> nothing (it is not a triangle, but which shape is it?).
    """
    from tasks.sources.easy_vqa import SHAPES

    words = question.lower().rstrip("?").split()
    negated = "not" in words or words[:2] == ["is", "no"]
    facts: dict[str, str] = {}
    if answer not in ("yes", "no"):
        facts["shape" if answer in SHAPES else "color"] = answer
    # A word of the question names the image's fact when the answer says it is there: an open question
    # ("what color is the circle?") presumes it, a yes/no question confirms it (yes, or no to a negation).
    present = answer not in ("yes", "no") or (answer == "yes") != negated
    for word in words:
        key = "shape" if word in SHAPES else "color" if word in COLORS else None
        if key and present:
            facts.setdefault(key, word)
    return facts


@functools.lru_cache(maxsize=2)
def _easy_vqa_facts(split: str) -> dict[int, dict[str, str]]:
    """Per image id, what all its questions say about it (``question_facts``), over a split."""
    import easy_vqa

    questions, answers, image_ids = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    facts: dict[int, dict[str, str]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        for key, value in question_facts(question, answer).items():
            facts.setdefault(image_id, {}).setdefault(key, value)
    return facts


def record_facts(record: Record) -> dict[str, str]:
    """What is known of an easy-vqa record's image: ``shape`` and / or ``color`` ({} for other records):
    from the record's ``meta`` when its source put them there, from its own question and answer, and
    from what every other question about the same image in the package says (``question_facts``)."""
    if record.source != "easy-vqa":
        return {}
    meta = record.meta
    facts = {key: str(meta[key]) for key in ("shape", "color") if key in meta}
    for key, value in question_facts(record.question, record.answer.strip()).items():
        facts.setdefault(key, value)
    if "image_id" in meta:
        for key, value in _easy_vqa_facts(str(meta.get("split", "train"))).get(int(meta["image_id"]), {}).items():
            facts.setdefault(key, value)
    return facts


def fact_hints(record: Record, facts: dict[str, str]) -> tuple[str, ...] | None:
    """L1..L5 built from the image's facts for a shape, colour or presence question; None for other kinds
    or when the facts the kind needs are unknown."""
    shape, color, answer = facts.get("shape"), facts.get("color"), record.answer.strip()
    seen = " ".join(x for x in (color, shape or ("shape" if color else None)) if x)
    solution = f"The image shows a {seen}, so the answer is {answer}."
    kind = hint_kind(record)
    if kind == "shape" and shape in OUTLINES:
        return (
            f"Look at the outline of the {color + ' ' if color else ''}shape, not at its fill or at the background.",
            "Count the corners of the outline and see whether its sides are straight or curved.",
            HINTS["shape"][2],
            OUTLINES[shape],
            solution,
        )
    if kind == "color" and color in LOOKS:
        return (
            f"Look at the colour the {shape or 'shape'} is filled with, not at the background.",
            HINTS["color"][1],
            HINTS["color"][2],
            LOOKS[color],
            solution,
        )
    if kind == "presence" and seen:
        return (
            "The image holds a single shape; the answer turns on its colour and its outline.",
            "Check each property the question names, colour and shape, against that one shape.",
            HINTS["presence"][2],
            f"The image shows a {seen}.",
            solution,
        )
    return None


def states_answer(hint: str, answer: str) -> bool:
    """True when some run of words in ``hint`` is, by the answer matcher, the answer itself.

    Windows of as many words as the normalized answer, up to two more (filler words such as "the" are
    dropped by normalization). Example: "Its outline has zero corners" vs "0" -> True ("zero" is 0);
    "Look at the red shape" vs "circle" -> False; "no corners" vs "no" -> True (it starts with no).
    """
    size = len(normalize_answer(extract_answer(answer)).split())
    if size == 0:
        return False
    words = hint.split()
    return any(
        answers_match(" ".join(words[start : start + n]), answer)
        for n in range(size, size + 3)
        for start in range(max(1, len(words) - n + 1))
    )


def rule_hints(record: Record) -> tuple[str, ...]:
    """L1..L5 for a record: from its image's facts where known (``fact_hints``), else the four ``HINTS``
    of its kind and the complete solution (the reference). A fixed hint that would state this record's
    answer is swapped for a neutral one (``NEUTRAL_HINTS``); if every stand-in states it too, no hints."""
    facts = record_facts(record)
    built = fact_hints(record, facts) if facts else None
    if built is not None:
        return built
    answer = record.answer.strip()
    hints = []
    for level, hint in enumerate(HINTS[hint_kind(record)], start=1):
        safe = next((h for h in (hint, *NEUTRAL_HINTS) if not states_answer(h, answer)), None)
        if safe is None:
            log.warning("record %s: every hint would state its answer %r; it gets no hints", record.id, answer)
            return ()
        if safe is not hint:
            log.info("record %s: hint L%d states the answer %r; a neutral one replaces it", record.id, level, answer)
        hints.append(safe)
    return (*hints, f"The complete solution: the answer is {answer}")


def leaking_levels(hints: tuple[str, ...] | list[str], answer: str) -> list[int]:
    """The levels among L1..L4 of ``hints`` that state ``answer`` (1-based); [] when none does."""
    return [level for level, hint in enumerate(hints[:4], start=1) if states_answer(hint, answer)]
