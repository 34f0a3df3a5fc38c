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
the trainer reads them back in ``keye_model.training.examples.rl_prompt``. The SFT mix also holds
instructed variants of a share of the records (``instructed_records``): the same prompts with the answer
rewritten to meet every instruction (``complying_answer``), so SFT teaches the forms RL then rewards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from data_specs.schemas import ID_PATTERN, Record
from keye_model.answers import answers_match, join_thinking, split_thinking
from keye_model.chat import NO_THINK_SUFFIX, THINK_SUFFIX
from keye_model.rewards import Constraint, check_constraints
from tasks.posttrain_data import RL_TASKS

log = logging.getLogger(__name__)

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


def alignment_record(record: Record, rng: random.Random, thinking: bool | None = None) -> Record:
    """``record`` as an alignment prompt (module docstring): same id, source and media; the question with
    instructions and a think switch; constraints, think mode and the RL reference in ``meta``.
    ``thinking``: the switch to use; None draws it (a reasoning record always thinks)."""
    free_form = record.task not in RL_TASKS
    instructions = draw_instructions(rng, free_form)
    if thinking is None:
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


# ---- instruction-following SFT data ----------------------------------------------------------------------
#: Share of the curated records the SFT mix also holds as an instructed variant (``instructed_records``).
INSTRUCTED_SHARE = 0.5
#: The mixes built from the curated records rather than sampled from them as they are (``mix_records``).
ALIGNMENT_MIX, SFT_MIX = "alignment_rl", "sft"
#: Id suffix of an instructed variant: ``<record id>-if``; lineage maps it back (``source_record_id``).
INSTRUCTED_SUFFIX = "-if"
#: Words a reply too short for a ``min_words`` instruction is extended with, one sentence at a time.
EXTENSIONS = ("That is the short answer to the question.", "Nothing more needs to be added here.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _as_list(text: str, min_items: int) -> str:
    """``text`` as bullet lines: one per sentence, or its words split in ``min_items`` runs when it has fewer."""
    items = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if len(items) < min_items:
        words = text.split()
        size = max(1, -(-len(words) // min_items))
        items = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return "\n".join(f"- {item}" for item in items)


def complying_answer(answer: str, constraints: Sequence[Constraint], record: Record) -> str | None:
    """``answer`` rewritten to meet every constraint, or None when the rewrite does not (checked by
    ``keye_model.rewards.check_constraints``, the alignment reward's own rule).

    A short answer (``RL_TASKS``) must still match itself afterwards (``keye_model.answers.answers_match``), so it
    is never cut. The content first (keywords dropped or added, commas dropped, cut to a word limit or extended), then
    the form around it, from the outside in: JSON wraps everything; otherwise a required first word, a
    heading line, a python block (``help(<function>)`` for a record that names one, else a ``print`` of the
    reply's first words), the content (as a list when asked) and the required final mark; case last.
    ``"circle"`` with "Use the word "answer"" and "End your reply with an exclamation mark" ->
    ``"The answer is circle!"``.
    """
    kinds = {c.kind: c.params for c in constraints}
    free_form = record.task not in RL_TASKS
    text = " ".join(answer.split())
    for word in kinds.get("exclude_keywords", {}).get("keywords", []):
        text = " ".join(re.sub(rf"\b{re.escape(word)}\b", "", text, flags=re.IGNORECASE).split())
    if "no_commas" in kinds:
        text = text.replace(",", "")
    if "include_keywords" in kinds:
        words = kinds["include_keywords"]["keywords"]
        ended = text if text.endswith((".", "!", "?")) else f"{text}."
        text = f"The answer is {text}" if words == ["answer"] else f"{ended} Key words: {' and '.join(words)}."
    if "max_words" in kinds and free_form:
        prefix_words = len(kinds.get("starts_with", {}).get("prefix", "").split())
        text = " ".join(text.split()[: kinds["max_words"]["limit"] - prefix_words])
    while len(text.split()) < kinds.get("min_words", {}).get("limit", 0):
        text = f"{text.rstrip()} {EXTENSIONS[len(text.split()) % len(EXTENSIONS)]}"
    if "json_format" in kinds:
        reply = json.dumps({"answer": text})
    else:
        if "ends_with_punctuation" in kinds:
            text = text.rstrip(".!?") + kinds["ends_with_punctuation"]["marks"][0]
        parts = [kinds["starts_with"]["prefix"]] if "starts_with" in kinds else []
        if "markdown_heading" in kinds:
            parts.append("\n# Summary\n")
        if "code_block" in kinds:
            first_words = " ".join(text.split()[:4])
            call = f"help({record.meta['function']})" if "function" in record.meta else f"print({first_words!r})"
            parts.append(f"\n```python\n{call}\n```\n")
        parts.append(_as_list(text, kinds["markdown_list"]["min_items"]) if "markdown_list" in kinds else text)
        reply = " ".join(parts).replace(" \n", "\n").replace("\n ", "\n").strip()
    reply = reply.lower() if "all_lowercase" in kinds else reply.upper() if "all_uppercase" in kinds else reply
    if not free_form and not answers_match(reply, answer):
        return None  # a short answer must stay what the matcher reads
    return reply if check_constraints(reply, tuple(constraints)).score == 1.0 else None


def instructed_record(record: Record, rng: random.Random) -> Record | None:
    """An instruction-following SFT sample from ``record``: its alignment prompt (the record's own think
    mode: a reasoning answer keeps its think block) with the answer rewritten by ``complying_answer``;
    id ``<record>-if``. None when the rewrite cannot meet the drawn instructions (or the id would be too long)."""
    reasoning, final_answer = split_thinking(record.answer)
    record_id = f"{record.id}{INSTRUCTED_SUFFIX}"
    if not final_answer.strip() or not ID_PATTERN.match(record_id):
        return None
    prompt = alignment_record(record, rng, thinking=bool(reasoning))
    reply = complying_answer(final_answer, constraints_of(prompt), record)
    if reply is None:
        return None
    answer = join_thinking(reasoning, reply) if reasoning else reply
    return dataclasses.replace(prompt, id=record_id, answer=answer)


def source_record_id(sample_id: str) -> str:
    """The curated record a mix sample was made from: itself, or the source of an instructed variant."""
    return sample_id.removesuffix(INSTRUCTED_SUFFIX)


def instructed_records(records: Sequence[Record], seed: int, share: float = INSTRUCTED_SHARE) -> list[Record]:
    """The SFT mix's pool: every record, then an instructed variant (``instructed_record``) of each of a
    ``share`` of them drawn by ``seed``. SFT teaches the instructions' forms, so alignment RL's rollouts
    meet them often enough to be rewarded (a model that never writes a code block or a capital letter gets
    no reward for one). ``share`` 0: the records alone."""
    if share <= 0:
        return list(records)
    rng = random.Random(seed)
    variants = [instructed_record(r, rng) for r in records if rng.random() < share]
    made = [v for v in variants if v is not None]
    log.info("instructed SFT records: %d of %d drawn (the rest could not comply)", len(made), len(variants))
    return [*records, *made]


def mix_records(
    mix: str, records: Sequence[Record], seed: int, instructed_share: float = INSTRUCTED_SHARE
) -> list[Record]:
    """The records mix ``mix`` is sampled from: the alignment prompts (``alignment_rl``), the records and
    their instructed variants (``sft``, ``instructed_share`` of them), or the curated records as they are."""
    if mix == ALIGNMENT_MIX:
        return alignment_records(records, seed)
    if mix == SFT_MIX:
        return instructed_records(records, seed, instructed_share)
    return list(records)
