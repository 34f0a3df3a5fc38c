"""Alignment RL prompts (SPEC.md section 4): curated records + a think switch + 1-3 checkable instructions.

Each prompt is a curated record whose question gains one to three format or constraint instructions,
written into the text AND attached as ``keye_model.rewards.Constraint``s in ``meta["constraints"]``, and
ends with ``/think`` or ``/no_think`` (the chat template's switches, ``keye_model.chat``), so the rule
rewards (think format, constraints) have something to check. Worked example, seed 0, easy-vqa record
"what shape is this?" / "circle":

    question: 'what shape is this?\\nAnswer in at most 4 words. End your reply with a period. /no_think'
    meta: {"constraints": [{"kind": "max_words", "params": {"limit": 4}},
                           {"kind": "ends_with_punctuation", "params": {"marks": "."}}],
           "thinking": false, "rl_reference": "circle", ...}

"circle." then earns rule reward 1 (format: no think block; answer matches; both constraints met).

Records whose task has a short checkable answer (``posttrain_data.RL_TASKS``) keep it as
``meta["rl_reference"]`` (the final answer, a think block removed) and only get instructions that leave
the answer matchable ("The answer is circle." and ``{"answer": "circle"}`` both match "circle", see
``keye_model.answers``). Free-form records (captions, text instructions) get ``rl_reference`` null (the
matcher cannot judge free text) and may also get structure instructions (lists, headings, code, length).
Instructions that cannot hold together (JSON and a required first word, lowercase and uppercase, ...) are
never drawn together (``CONFLICTS``).

The alignment stage's mix (``alignment_rl``) is sampled from these prompts at curation (``mix_records``);
the trainer reads them back in ``keye_model.training.examples.rl_prompt``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from data_specs.schemas import Record
from keye_model.answers import split_thinking
from keye_model.chat import NO_THINK_SUFFIX, THINK_SUFFIX
from keye_model.rewards import Constraint
from tasks.posttrain_data import RL_TASKS

#: Instructions per prompt, at least and at most.
MIN_INSTRUCTIONS, MAX_INSTRUCTIONS = 1, 3
#: Share of prompts (without a task that needs reasoning) that ask for a think block.
THINK_SHARE = 0.5
#: The question used for a record that has none (as ``examples.to_example`` does).
DEFAULT_QUESTION = "Describe this."


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction as the user reads it and as the rule reward checks it."""

    text: str
    """The sentence added to the question."""
    constraint: Constraint
    """Its machine-checkable form."""


# One builder per constraint kind: (rng, free_form) -> Instruction. ``short`` ones fit a one-word
# reference (the answer must stay matchable), the rest only free-form answers.
Builder = Callable[[random.Random, bool], Instruction]


def _json(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(
        text='Reply only with a JSON object of the form {"answer": "..."}.',
        constraint=Constraint(kind="json_format"),
    )


def _include(rng: random.Random, free_form: bool) -> Instruction:
    if not free_form:
        # "The answer is circle" keeps the answer matchable (the matcher drops that lead-in).
        words = ["answer"]
    else:
        words = sorted(rng.sample(["python", "function", "input", "result", "value"], rng.randint(1, 2)))
    quoted = " and ".join(f'"{w}"' for w in words)
    return Instruction(
        text=f"Use the word{'s' if len(words) > 1 else ''} {quoted} in your reply.",
        constraint=Constraint(kind="include_keywords", params={"keywords": words}),
    )


def _exclude(rng: random.Random, free_form: bool) -> Instruction:
    word = rng.choice(["simply", "basically", "very"] if free_form else ["shape", "image", "picture"])
    return Instruction(
        text=f'Do not use the word "{word}".',
        constraint=Constraint(kind="exclude_keywords", params={"keywords": [word]}),
    )


def _ends(rng: random.Random, free_form: bool) -> Instruction:
    mark, name = rng.choice([(".", "a period"), ("!", "an exclamation mark")])
    return Instruction(
        text=f"End your reply with {name}.", constraint=Constraint(kind="ends_with_punctuation", params={"marks": mark})
    )


def _starts(rng: random.Random, free_form: bool) -> Instruction:
    prefix = "In brief:" if free_form else "Answer:"
    return Instruction(
        text=f'Start your reply with "{prefix}".', constraint=Constraint(kind="starts_with", params={"prefix": prefix})
    )


def _max_words(rng: random.Random, free_form: bool) -> Instruction:
    # At least 4 for short answers: "The answer is circle." must fit.
    limit = rng.choice([20, 30, 40] if free_form else [4, 5])
    return Instruction(
        text=f"Answer in at most {limit} words.", constraint=Constraint(kind="max_words", params={"limit": limit})
    )


def _min_words(rng: random.Random, free_form: bool) -> Instruction:
    limit = rng.choice([8, 12])
    return Instruction(
        text=f"Use at least {limit} words.", constraint=Constraint(kind="min_words", params={"limit": limit})
    )


def _lowercase(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(text="Write your whole reply in lowercase letters.", constraint=Constraint(kind="all_lowercase"))


def _uppercase(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(text="Write your whole reply in capital letters.", constraint=Constraint(kind="all_uppercase"))


def _no_commas(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(text="Do not use any commas.", constraint=Constraint(kind="no_commas"))


def _list(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(
        text="Format your reply as a bulleted list with at least 2 items.",
        constraint=Constraint(kind="markdown_list", params={"min_items": 2}),
    )


def _heading(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(
        text='Include a markdown heading line such as "# Summary".', constraint=Constraint(kind="markdown_heading")
    )


def _code(rng: random.Random, free_form: bool) -> Instruction:
    return Instruction(
        text="Include a short example in a fenced code block tagged python (```python ... ```).",
        constraint=Constraint(kind="code_block", params={"language": "python"}),
    )


#: Builders for short, matchable answers (also used for free-form ones).
SHORT_BUILDERS: dict[str, Builder] = {
    "json_format": _json,
    "include_keywords": _include,
    "exclude_keywords": _exclude,
    "ends_with_punctuation": _ends,
    "starts_with": _starts,
    "max_words": _max_words,
    "all_lowercase": _lowercase,
    "all_uppercase": _uppercase,
    "no_commas": _no_commas,
}
#: Builders only for free-form answers (they would break a one-word answer's match).
FREE_FORM_BUILDERS: dict[str, Builder] = {
    "min_words": _min_words,
    "markdown_list": _list,
    "markdown_heading": _heading,
    "code_block": _code,
}
#: Kinds that cannot both hold in one reply (a JSON reply has no first word of choice nor a final period;
#: the required first words hold capitals and lowercase letters; a python tag is lowercase).
CONFLICTS = frozenset(
    frozenset(pair)
    for pair in (
        ("json_format", "starts_with"),
        ("json_format", "ends_with_punctuation"),
        ("json_format", "all_uppercase"),
        ("json_format", "min_words"),
        ("json_format", "markdown_list"),
        ("json_format", "markdown_heading"),
        ("json_format", "code_block"),
        ("all_lowercase", "all_uppercase"),
        ("all_lowercase", "starts_with"),
        ("all_uppercase", "starts_with"),
        ("all_uppercase", "code_block"),
    )
)


def draw_instructions(rng: random.Random, free_form: bool) -> list[Instruction]:
    """1-3 instructions of distinct, compatible kinds (``CONFLICTS``), in a random order."""
    builders = {**SHORT_BUILDERS, **(FREE_FORM_BUILDERS if free_form else {})}
    wanted = rng.randint(MIN_INSTRUCTIONS, MAX_INSTRUCTIONS)
    kinds: list[str] = []
    for kind in rng.sample(sorted(builders), len(builders)):
        if len(kinds) == wanted:
            break
        if all(frozenset((kind, k)) not in CONFLICTS for k in kinds):
            kinds.append(kind)
    return [builders[k](rng, free_form) for k in kinds]


def _without_switch(question: str) -> str:
    text = question.strip()
    for suffix in (NO_THINK_SUFFIX, THINK_SUFFIX):
        if text.endswith(suffix):
            return text[: -len(suffix)].rstrip()
    return text


def alignment_record(record: Record, rng: random.Random) -> Record:
    """``record`` as an alignment prompt (module docstring): same id, source and media; the question with
    instructions and a think switch; constraints, think mode and the RL reference in ``meta``."""
    free_form = record.task not in RL_TASKS
    instructions = draw_instructions(rng, free_form)
    # A reasoning record teaches the think format: it keeps asking for one.
    thinking = record.task == "reasoning" or rng.random() < THINK_SHARE
    suffix = THINK_SUFFIX if thinking else NO_THINK_SUFFIX
    question = _without_switch(record.question) or DEFAULT_QUESTION
    text = f"{question}\n{' '.join(i.text for i in instructions)} {suffix}"
    _, final_answer = split_thinking(record.answer)
    meta: dict[str, Any] = {
        **record.meta,
        "constraints": [{"kind": i.constraint.kind, "params": i.constraint.params} for i in instructions],
        "thinking": thinking,
        "rl_reference": None if free_form or not final_answer else final_answer,
    }
    return dataclasses.replace(record, question=text, meta=meta)


def alignment_records(records: Sequence[Record], seed: int) -> list[Record]:
    """Every record as an alignment prompt; the same records and seed give the same prompts."""
    rng = random.Random(seed)
    return [alignment_record(r, rng) for r in records]


def constraints_of(record: Record) -> tuple[Constraint, ...]:
    """The ``Constraint``s an alignment record carries (ValueError naming the record when malformed)."""
    try:
        return tuple(Constraint(**c) for c in record.meta["constraints"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"record {record.id}: not an alignment prompt ({error})") from error


#: Mixes whose samples are prompts built from the curated records, by mix name.
MIX_PROMPTS: dict[str, Callable[[Sequence[Record], int], list[Record]]] = {"alignment_rl": alignment_records}


def mix_records(mix: str, records: Sequence[Record], seed: int) -> list[Record]:
    """The records mix ``mix`` is sampled from: its prompts (``MIX_PROMPTS``) or the curated records as they are."""
    build = MIX_PROMPTS.get(mix)
    return list(records) if build is None else build(records, seed)
