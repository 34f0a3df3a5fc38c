"""Rewards for GSPO (SPEC.md section 4): rule checks, a judge and our reward model, combined by weights.

Rule rewards are pure functions of text that return a ``RuleScore`` (a score in [0, 1] and the reason):
- ``think_format``: with thinking requested, ``<think>reasoning</think>`` then a non-empty answer; with
  ``/no_think`` (the template pre-fills the empty block in the prompt) no think tags in the response;
- correctness: the answer against the reference, judged by ``keye_model.answers.judge_answer`` (the one
  matcher that LongCoT and evaluation use too, so RL optimizes what evaluation measures);
- constraints (``CONSTRAINTS``): structure (JSON, markdown heading / list, fenced code) and hard
  instruction constraints (keywords, punctuation, word counts, case, ...), each a function of the answer
  text and its parameters, named by a ``Constraint(kind=..., params=...)``.

``rule_reward`` gates the checks of a sample by its format: score = format * mean(correctness,
constraints); a sample with nothing to check gets None (not applicable). ``RewardFunction`` combines
the applicable sources (rule, judge, reward_model) by their configured weights:
total = sum(w_s * score_s) / sum(w_s) over sources whose score is not None, so the total stays in [0, 1]
and a correct, well-formed answer under rule-only weights scores exactly 1.0.
Judge and reward-model scores come from callables passed in (no network here); ``versus_reference``
turns a pairwise preference model (query, answer_a, answer_b) -> P(a better) into such a callable.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keye_model import special_tokens as st
from keye_model.answers import judge_answer, split_thinking

#: Reward sources a ``RewardFunction`` may weigh.
SOURCES = ("rule", "judge", "reward_model")


@dataclass(frozen=True, kw_only=True)
class RuleScore:
    """The outcome of one rule check."""

    score: float
    """In [0, 1]; hard checks give 0 or 1."""
    reason: str
    """Why, in a few words (logged with the rollout)."""


def _pass(reason: str) -> RuleScore:
    return RuleScore(score=1.0, reason=reason)


def _fail(reason: str) -> RuleScore:
    return RuleScore(score=0.0, reason=reason)


# ---------------------------------------------------------------- format


def think_format(response: str, *, thinking: bool) -> RuleScore:
    """Reasoning format of a decoded response (think tags kept, as ``processor.decode_response`` gives).

    thinking=True: ``"<think>\\nwhy\\n</think>\\n\\nblue"`` passes; no block, an empty block, a second
    block or an empty answer fail. thinking=False: ``"blue"`` passes, any think tag fails.
    """
    text = response.strip()
    opens, closes = text.count(st.THINK_START), text.count(st.THINK_END)
    if not thinking:
        if opens or closes:
            return _fail("think tags in a /no_think response")
        return _pass("no think block") if text else _fail("empty answer")
    if not text.startswith(st.THINK_START):
        return _fail("thinking requested but the response does not start with <think>")
    if opens != 1 or closes != 1:
        return _fail(f"need one think block, got {opens} <think> and {closes} </think>")
    reasoning, answer = split_thinking(text)
    if not reasoning:
        return _fail("empty reasoning")
    if not answer:
        return _fail("empty answer after </think>")
    return _pass("think block then answer")


# ---------------------------------------------------------------- constraints (structure and hard)

_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)\n?```", re.DOTALL)


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+(?:'\w+)?\b", text)


def json_format(text: str) -> RuleScore:
    """The answer (or its single fenced block) parses as a JSON object or array."""
    fences = _FENCE.findall(text)
    body = fences[0][1] if len(fences) == 1 else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        return _fail(f"invalid JSON: {error.msg} at char {error.pos}")
    return _pass("valid JSON") if isinstance(value, (dict, list)) else _fail("JSON is not an object or array")


def markdown_heading(text: str) -> RuleScore:
    """At least one ATX heading line (``# Title`` .. ``###### Title``)."""
    found = re.search(r"^#{1,6} \S", text, re.MULTILINE)
    return _pass("markdown heading") if found else _fail("no markdown heading")


def markdown_list(text: str, min_items: int = 2) -> RuleScore:
    """At least ``min_items`` bullet (``-``, ``*``, ``+``) or numbered (``1.``) list lines."""
    items = re.findall(r"^\s*(?:[-*+]|\d+[.)])\s+\S", text, re.MULTILINE)
    if len(items) >= min_items:
        return _pass(f"{len(items)} list items")
    return _fail(f"{len(items)} list items < {min_items}")


def code_block(text: str, language: str | None = None) -> RuleScore:
    """A closed fenced code block with a non-empty body, tagged ``language`` when one is given."""
    blocks = [(lang, body) for lang, body in _FENCE.findall(text) if body.strip()]
    if not blocks:
        return _fail("no closed, non-empty ``` code block")
    if language is not None and not any(lang.lower() == language.lower() for lang, _ in blocks):
        return _fail(f"no code block tagged {language!r}")
    return _pass("fenced code block")


def include_keywords(text: str, keywords: list[str]) -> RuleScore:
    """Every keyword occurs (case-insensitive, as a whole word or phrase)."""
    missing = [k for k in keywords if not re.search(rf"\b{re.escape(k.lower())}\b", text.lower())]
    return _fail(f"missing keywords {missing}") if missing else _pass("all keywords present")


def exclude_keywords(text: str, keywords: list[str]) -> RuleScore:
    """No keyword occurs (case-insensitive, as a whole word or phrase)."""
    found = [k for k in keywords if re.search(rf"\b{re.escape(k.lower())}\b", text.lower())]
    return _fail(f"forbidden keywords {found}") if found else _pass("no forbidden keyword")


def ends_with_punctuation(text: str, marks: str = ".!?") -> RuleScore:
    """The answer's last non-space character is one of ``marks``."""
    stripped = text.rstrip()
    if stripped and stripped[-1] in marks:
        return _pass(f"ends with {stripped[-1]!r}")
    return _fail(f"does not end with one of {marks!r}")


def starts_with(text: str, prefix: str) -> RuleScore:
    """The answer starts with ``prefix`` (case-sensitive, leading spaces ignored)."""
    return _pass("prefix present") if text.lstrip().startswith(prefix) else _fail(f"does not start with {prefix!r}")


def max_words(text: str, limit: int) -> RuleScore:
    """At most ``limit`` words."""
    count = len(_words(text))
    return _pass(f"{count} words") if count <= limit else _fail(f"{count} words > {limit}")


def min_words(text: str, limit: int) -> RuleScore:
    """At least ``limit`` words."""
    count = len(_words(text))
    return _pass(f"{count} words") if count >= limit else _fail(f"{count} words < {limit}")


def all_lowercase(text: str) -> RuleScore:
    """No uppercase letter."""
    return _pass("all lowercase") if text == text.lower() else _fail("contains uppercase letters")


def all_uppercase(text: str) -> RuleScore:
    """No lowercase letter."""
    return _pass("all uppercase") if text == text.upper() else _fail("contains lowercase letters")


def no_commas(text: str) -> RuleScore:
    """No comma anywhere."""
    return _pass("no commas") if "," not in text else _fail(f"{text.count(',')} commas")


#: Constraint kinds and their checks; a check takes the answer text and the constraint's params.
CONSTRAINTS: dict[str, Callable[..., RuleScore]] = {
    "json_format": json_format,
    "markdown_heading": markdown_heading,
    "markdown_list": markdown_list,
    "code_block": code_block,
    "include_keywords": include_keywords,
    "exclude_keywords": exclude_keywords,
    "ends_with_punctuation": ends_with_punctuation,
    "starts_with": starts_with,
    "max_words": max_words,
    "min_words": min_words,
    "all_lowercase": all_lowercase,
    "all_uppercase": all_uppercase,
    "no_commas": no_commas,
}


@functools.cache
def _signature(kind: str) -> inspect.Signature:
    """The check's signature, read once per kind (alignment prompts make ~100k constraints per curation)."""
    return inspect.signature(CONSTRAINTS[kind])


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """One instruction constraint on an answer, e.g. ``Constraint(kind="max_words", params={"limit": 20})``."""

    kind: str
    """A key of ``CONSTRAINTS``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the check (JSON-serializable)."""

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINTS:
            raise ValueError(f"unknown constraint kind {self.kind!r}; kinds: {sorted(CONSTRAINTS)}")
        try:
            _signature(self.kind).bind("answer", **self.params)
        except TypeError as error:
            raise ValueError(f"constraint {self.kind}: bad params {self.params}: {error}") from error

    def check(self, answer: str) -> RuleScore:
        return CONSTRAINTS[self.kind](answer, **self.params)


def check_constraints(answer: str, constraints: tuple[Constraint, ...]) -> RuleScore:
    """Fraction of constraints satisfied; the reason lists every check's outcome."""
    if not constraints:
        raise ValueError("check_constraints needs at least one constraint")
    results = [c.check(answer) for c in constraints]
    reason = "; ".join(f"{c.kind}: {r.reason}" for c, r in zip(constraints, results))
    return RuleScore(score=sum(r.score for r in results) / len(results), reason=reason)


# ---------------------------------------------------------------- combining sources


@dataclass(frozen=True, kw_only=True)
class RewardSample:
    """Everything a reward source may look at for one rollout."""

    id: str
    """Prompt id (for error messages and logs)."""
    query: str
    """Text of the last user message, without any hint."""
    response: str
    """The decoded response, think block included (``processor.decode_response``)."""
    reference: str | None = None
    """Reference answer, or None for tasks without one."""
    thinking: bool | None = None
    """True: a think block is required; False (``/no_think``): none allowed; None: format not checked."""
    constraints: tuple[Constraint, ...] = ()
    """Hard instruction constraints on the answer."""
    prompt_text: str = ""
    """The prompt exactly as the policy saw it (template, hint), decoded."""
    hint_level: int = 0
    """Hint level appended to the query (0: none)."""


@dataclass(frozen=True, kw_only=True)
class Reward:
    """A combined reward and where it came from."""

    total: float
    """Weighted mean of the applicable sources' scores, in [0, 1]."""
    parts: dict[str, float]
    """Score of each applicable source."""
    reason: str = ""
    """The rule checks' reasons (empty without a rule source)."""


def rule_reward(sample: RewardSample) -> RuleScore | None:
    """Format gate times the mean of correctness and constraint scores; None when nothing applies.

    Example: thinking requested, well formed, correct answer, 1 of 2 constraints met -> 1 * (1 + 0.5) / 2.
    """
    checks: list[tuple[str, RuleScore]] = []
    if sample.reference is not None:
        verdict = judge_answer(sample.response, sample.reference)
        checks.append(("answer", RuleScore(score=float(verdict.match), reason=verdict.reason)))
    if sample.constraints:
        _, answer = split_thinking(sample.response)
        checks.append(("constraints", check_constraints(answer, sample.constraints)))
    gate = think_format(sample.response, thinking=sample.thinking) if sample.thinking is not None else None
    if gate is None and not checks:
        return None
    content = sum(s.score for _, s in checks) / len(checks) if checks else 1.0
    reasons = [f"{name}: {s.reason}" for name, s in ([("format", gate)] if gate else []) + checks]
    score = (gate.score if gate else 1.0) * content
    return RuleScore(score=score, reason="; ".join(reasons))


@dataclass(frozen=True, kw_only=True)
class RewardFunction:
    """Rule, judge and reward-model scores combined by weights (SPEC.md section 4, alignment RL)."""

    weights: tuple[tuple[str, float], ...] = (("rule", 1.0),)
    """(source, weight) pairs, sources from ``SOURCES`` (``RLSpec.reward_weights``)."""
    judge: Callable[[RewardSample], float | None] | None = None
    """Generative judge score in [0, 1] (e.g. against the reference); None when it does not apply."""
    reward_model: Callable[[RewardSample], float | None] | None = None
    """Our reward model's score in [0, 1]; None when it does not apply."""

    def __post_init__(self) -> None:
        names = [name for name, _ in self.weights]
        unknown = sorted(set(names) - set(SOURCES))
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"reward weights {self.weights}: sources must be distinct names from {SOURCES}")
        if any(w < 0 for _, w in self.weights) or not any(w > 0 for _, w in self.weights):
            raise ValueError(f"reward weights {self.weights}: need weights >= 0, at least one > 0")
        for name in ("judge", "reward_model"):
            if name in names and getattr(self, name) is None:
                raise ValueError(f"reward weights name {name!r} but no {name} callable was given")

    def __call__(self, sample: RewardSample) -> Reward:
        parts: dict[str, float] = {}
        reason = ""
        for name, _ in self.weights:
            if name == "rule":
                rule = rule_reward(sample)
                score = None if rule is None else rule.score
                reason = "" if rule is None else rule.reason
            else:
                score = getattr(self, name)(sample)
            if score is None:
                continue
            score = float(score)
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"sample {sample.id}: {name} score {score} is outside [0, 1]")
            parts[name] = score
        if not parts:
            raise ValueError(
                f"sample {sample.id}: no reward source applies (weights {self.weights}; no "
                "reference, constraints or think mode for the rule source?)"
            )
        weight = dict(self.weights)
        denominator = math.fsum(weight[name] for name in parts)
        if denominator <= 0:
            raise ValueError(f"sample {sample.id}: applicable sources {sorted(parts)} all have weight 0")
        total = math.fsum(weight[name] * score for name, score in parts.items()) / denominator
        return Reward(total=total, parts=parts, reason=reason)


def versus_reference(prefer: Callable[[str, str, str], float]) -> Callable[[RewardSample], float | None]:
    """A pairwise preference model (query, answer_a, answer_b) -> P(a better) as a judge score.

    Score = P(response better than the reference), asked in both orders and averaged so position bias
    cancels: (prefer(q, resp, ref) + 1 - prefer(q, ref, resp)) / 2. None when there is no reference.
    """

    def score(sample: RewardSample) -> float | None:
        if sample.reference is None:
            return None
        forward = prefer(sample.query, sample.response, sample.reference)
        backward = prefer(sample.query, sample.reference, sample.response)
        return (float(forward) + 1.0 - float(backward)) / 2.0

    return score
