r"""The one answer matcher: the GSPO rule reward, LongCoT level 1 and every evaluation metric judge here.

A verdict (``judge_answer``; ``answers_match`` is its bool) compares a response with one or more references:
1. extract (``extract_answer``): the text after ``</think>`` (``split_thinking``), the last ``\boxed{...}`` in
   it if any, without an "Answer:" / "The answer is" lead-in;
2. normalize (``normalize_answer``): NFKC, lower case, ``\frac{a}{b}`` as ``a/b``, thousands commas dropped,
   punctuation as spaces (a decimal point, a fraction slash, a minus sign and a percent sign stay),
   articles and filler ("it is", "there are") dropped, number words as digits ("none" and "zero" -> 0),
   yes/no variants as yes/no (true, correct, yeah -> yes; false, incorrect, nope -> no), a lone option
   letter ("(B)", "B.", "option b") as that letter;
3. decide, first rule that applies:
   - empty answer or reference: wrong;
   - a reference that is an option letter: the letter the response picks (``extract_choice``) must equal it;
   - a yes/no reference: a response that starts with yes or no, and says neither again (nor negates after
     a yes), is judged by that word ("Yes, there is a circle." vs "yes"; "No, it is not." vs "no");
   - both numbers, optionally with a unit ("3 cm"): equal within relative tolerance 1e-6, "50%" as 50 or
     0.5, and the same unit unless one side has none; a number never equals a non-number ("4 apples" vs "4");
   - otherwise word for word: no negation on one side only, the same number of words, each equal to its
     reference word up to a plural "s" or, in words of 7+ letters, a typo (one letter changed, added or
     dropped, or two neighbours swapped; never the first letter).
   So an extra or missing content word is wrong ("dark red" vs "red", "blue circle" vs "circle",
   "not red" vs "red"), whichever of the three users asks.

Example: ``"<think>\n2+2\n</think>\n\nThe answer is \boxed{4}"`` vs ``"four"``: extracted ``"4"``, both
normalize to ``"4"``: right. ``"rectangel"`` vs ``"rectangle"``: one word each, two letters swapped: right.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from keye_model.special_tokens import THINK_END, THINK_START

# ---- think blocks and the final answer --------------------------------------------------------------


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split a decoded response into (reasoning, answer).

    ``"<think>\\nbecause\\n</think>\\n\\nblue"`` -> ``("because", "blue")``; an empty block gives ``("", ...)``;
    a response without ``</think>`` gives ``(None, text)``. An unclosed ``<think>`` (generation cut off)
    gives ``(rest, "")``.
    """
    stripped = text.strip()
    if THINK_END in stripped:
        head, answer = stripped.split(THINK_END, 1)
        return head.replace(THINK_START, "", 1).strip(), answer.strip()
    if stripped.startswith(THINK_START):
        return stripped[len(THINK_START) :].strip(), ""
    return None, stripped


def join_thinking(thinking: str | None, answer: str) -> str:
    """The inverse of ``split_thinking``: a full response in the chat template's reasoning form.

    ``("because", "blue")`` -> ``"<think>\\nbecause\\n</think>\\n\\nblue"``; ``("", "blue")`` gives the empty
    block the template renders for a ``/no_think`` turn; ``(None, "blue")`` gives the bare answer.
    """
    if thinking is None:
        return answer.strip()
    return f"{THINK_START}\n{thinking.strip()}\n{THINK_END}\n\n{answer.strip()}"


_LEAD_IN = re.compile(
    r"^(?:so,?\s+|therefore,?\s+)?(?:the\s+)?(?:final\s+|correct\s+)?answer\b\s*(?:is\b)?\s*[:\-]?\s*", re.IGNORECASE
)


def extract_answer(text: str) -> str:
    r"""The final answer inside a response: the last ``\boxed{...}`` after the think block if any, else
    that text without an "Answer:" / "The answer is" lead-in.

    Example: ``"<think>..</think> so \boxed{\frac{1}{2}}"`` -> ``"\frac{1}{2}"``; ``"Answer: blue"`` -> ``"blue"``.
    """
    _, answer = split_thinking(text)
    start = answer.rfind("\\boxed{")
    if start < 0:
        return _LEAD_IN.sub("", answer.strip()).strip()
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(answer)):
        if answer[i] == "{":
            depth += 1
        elif answer[i] == "}":
            if depth == 0:
                return answer[begin:i].strip()
            depth -= 1
    return answer[begin:].strip()  # unbalanced: take the rest


# ---- normalization ----------------------------------------------------------------------------------

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
} | {
    "none": "0",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
}
_YES_NO = {
    "true": "yes",
    "correct": "yes",
    "yeah": "yes",
    "yep": "yes",
    "yup": "yes",
    "false": "no",
    "incorrect": "no",
    "nope": "no",
}
_SPELLINGS = {"grey": "gray", "colour": "color"}
#: Dropped anywhere: articles and the glue of a sentence-shaped answer ("It is a circle.", "There are 3").
_FILLER = frozenset("a an the is it its this that thats there are of answer final".split())
_NEGATIONS = frozenset("not never neither nor without cannot".split())
#: A whole answer naming one option: "(B)", "B.", "b)", "option b", "Choice (C)".
_LONE_LETTER = re.compile(r"^\s*(?:(?:option|choice)\s*)?\(?([a-j])\)?\s*[.:)]?\s*$", re.IGNORECASE)

_LATEX = (
    (re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}"), r"\1/\2"),
    (re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\^\s*\{?\\circ\}?"), " "),
    (re.compile(r"\\(?:left|right|,|!|;)"), ""),
    (re.compile(r"\\%"), "%"),
)
_CONTRACTIONS = (
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'"), ""),
)
#: Punctuation that becomes a space. Kept: a decimal point before a digit (not after a letter), a slash
#: between digits, a percent sign after a digit, a minus sign before a digit at a word start or in 1e-3.
_PUNCTUATION = re.compile(
    r"[^\w\s.%/\-]|_|\.(?!\d)|(?<=[a-z])\.|(?<!\d)%|(?<!\d)/|/(?!\d)|-(?!\d)|(?<=[\w.%/])(?<!\de)-"
)


def normalize_answer(text: str) -> str:
    r"""Canonical form of a short answer (see the module docstring for the rules).

    Examples: ``"The Two Circles!"`` -> ``"2 circles"``; ``"The (B) Circle."`` -> ``"b circle"``;
    ``" $1,234$ "`` -> ``"1234"``; ``\frac{1}{2}`` -> ``"1/2"``; ``"(A)"`` -> ``"a"``; ``"Yes, it is."`` -> ``"yes"``.
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2212", "-").lower().strip()
    if letter := _LONE_LETTER.match(text):
        return letter.group(1)
    for pattern, replacement in _LATEX + _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 1,234 -> 1234
    text = re.sub(r"(?<=\d)\s*/\s*(?=\d)", "/", text)  # 1 / 2 -> 1/2
    text = re.sub(r"(?<=\d)\s*(?:%|percent\b|per cent\b)", "%", text)  # 50 percent -> 50%
    words = _PUNCTUATION.sub(" ", text).split()
    words = [_YES_NO.get(w, _NUMBER_WORDS.get(w, _SPELLINGS.get(w, w))) for w in words if w not in _FILLER]
    if len(words) > 1 and len(set(words)) == 1 and words[0] in ("yes", "no"):
        words = words[:1]  # "Yes, that is correct." -> yes
    return " ".join(words)


# ---- numbers ----------------------------------------------------------------------------------------

_UNITS = {canonical: canonical for canonical in "mm cm m km ft mi mg g kg lb ms s min h ml l deg usd".split()} | {
    "millimeter": "mm",
    "millimetre": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "kilometer": "km",
    "kilometre": "km",
    "in": "in",
    "inch": "in",
    "inche": "in",
    "foot": "ft",
    "feet": "ft",
    "mile": "mi",
    "gram": "g",
    "kilogram": "kg",
    "kilo": "kg",
    "lbs": "lb",
    "pound": "lb",
    "sec": "s",
    "second": "s",
    "minute": "min",
    "hr": "h",
    "hour": "h",
    "day": "day",
    "week": "week",
    "month": "month",
    "year": "year",
    "yr": "year",
    "degree": "deg",
    "dollar": "usd",
    "cent": "cent",
    "euro": "eur",
    "eur": "eur",
    "liter": "l",
    "litre": "l",
    "milliliter": "ml",
}
_REAL = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_QUANTITY = re.compile(rf"^(?P<num>{_REAL})(?:/(?P<den>{_REAL}))?(?P<pct>%)?\s?(?P<unit>[a-z]+)?$")


def _quantity(normalized: str) -> tuple[set[float], str] | None:
    """(values, canonical unit or "") of a normalized answer that is one number, else None."""
    match = _QUANTITY.match(normalized)
    if not match:
        return None
    unit = ""
    if match["unit"]:
        name = match["unit"]
        unit = _UNITS.get(name) or _UNITS.get(name[:-1] if name.endswith("s") else name, "")
        if not unit:
            return None  # "4 apples" is not a number
    value = float(match["num"])
    if match["den"] is not None:
        if float(match["den"]) == 0:
            return None
        value /= float(match["den"])
    return ({value, value / 100} if match["pct"] else {value}), unit


def parse_number(text: str) -> set[float] | None:
    r"""The values an answer may denote, or None when it is not one number (with an optional unit).

    ``"3/4"`` -> {0.75}; ``"50%"`` -> {50.0, 0.5} (a percentage matches either way of writing it);
    ``"1e3"`` -> {1000.0}; ``"three"`` -> {3.0}; ``"4 cm"`` -> {4.0}; ``"blue"``, ``"4 apples"`` -> None.
    """
    found = _quantity(normalize_answer(text))
    return None if found is None else found[0]


# ---- multiple choice --------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


def extract_choice(text: str, num_options: int = 4, options: Sequence[str] = ()) -> str | None:
    """The option letter a response picks (upper case), or None.

    Tried in order: "answer is (b)" / "Answer: B"; "option b" / "choice (b)"; the whole reply is one letter
    ("b", "(C)", "D."); a reply starting "B." / "(B)" / "B)" / "B:"; a "(B)" anywhere; the reply equal to
    one option's text (``options`` as "A. text"); a single capital option letter standing alone ("Option C
    is right"; an article "A" or pronoun "I" before a lower-case word does not count).
    Only the text after a ``</think>`` is read.
    """
    valid = LETTERS[:num_options]
    text = text.rsplit(THINK_END, 1)[-1].strip()
    letter = f"([{valid}])"
    answer_is = r"(?i:answer\s*(?:is|:)?\s*[:\-]?\s*(?:option\s*)?)"
    rules = (
        re.compile(rf"{answer_is}\(?{letter}\)?(?![A-Za-z])"),
        re.compile(rf"{answer_is}(?:\({letter.lower()}\)|{letter.lower()}\)?[.!]?\s*$)"),
        re.compile(rf"\b(?:option|choice)\s*\(?{letter}\)?(?![a-z])", re.I),
        re.compile(rf"^\(?{letter}\)?[.:)]?$", re.I),
        re.compile(rf"^\(?{letter}(?:\)|[.:])"),
        re.compile(rf"\({letter}\)"),
    )
    for rule in rules:
        match = rule.search(text)
        if match:
            return next(group for group in match.groups() if group).upper()
    said = normalize_answer(text)
    by_text = [_option_letter(o) for o in options if said and normalize_answer(_option_text(o)) == said]
    if len(by_text) == 1 and by_text[0] in valid:
        return by_text[0]
    alone = {
        m.group(1)
        for m in re.finditer(rf"(?<![A-Za-z]){letter}(?![A-Za-z])", text)
        if not (m.group(1) in "AI" and re.match(r"\s+[a-z]", text[m.end() :]))
    }  # "A dog", "I think"
    return alone.pop() if len(alone) == 1 else None


def _option_letter(option: str) -> str:
    return option.strip()[:1].upper()


def _option_text(option: str) -> str:
    """ "B. a red car" -> "a red car"."""
    return re.sub(r"^\s*\(?[A-Za-z][.):]\s*", "", option)


# ---- the verdict ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether an answer is right, and why (the RL reward logs the reason with the rollout)."""

    match: bool
    """True when the answer is equivalent to a reference."""
    reason: str
    """Why, in a few words."""


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("x", "ch", "sh", "ss")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _one_edit(a: str, b: str) -> bool:
    """One letter changed, inserted or dropped, or two neighbours swapped ("rectangel" / "rectangle")."""
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    i = next((k for k in range(len(a)) if a[k] != b[k]), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    return a[i + 1 :] == b[i + 1 :] or (a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :])


def _same_word(got: str, want: str) -> bool:
    if got == want or _singular(got) == _singular(want):
        return True
    # A typo in a long word only: short words differ by one letter too often ("horse" / "house"), a new
    # first letter often flips the meaning ("typical" / "atypical"), and numbers never match fuzzily.
    return (
        got.isalpha()
        and want.isalpha()
        and min(len(got), len(want)) >= 7
        and got[0] == want[0]
        and _one_edit(got, want)
    )


def _negated(words: list[str]) -> bool:
    return bool(_NEGATIONS & set(words)) or (len(words) > 1 and "no" in words)


def _judge_one(prediction: str, reference: str) -> Verdict:
    got_raw, want_raw = extract_answer(prediction), extract_answer(reference)
    got, want = normalize_answer(got_raw), normalize_answer(want_raw)
    if not got:
        return Verdict(match=False, reason="empty answer")
    if not want:
        return Verdict(match=False, reason=f"reference {reference!r} is empty after normalization")
    if _LONE_LETTER.match(want_raw):
        picked = extract_choice(got_raw, len(LETTERS))
        if picked is not None and picked.lower() == want:
            return Verdict(match=True, reason=f"option {picked}")
        return Verdict(match=False, reason=f"option {picked} != {want.upper()}")
    if got == want:
        return Verdict(match=True, reason="exact match after normalization")
    got_words, want_words = got.split(), want.split()
    first, rest = got_words[0], set(got_words[1:])
    # "Yes, it is not red." contradicts itself; "No, it is not." does not.
    hedged = {"yes", "no"} | (_NEGATIONS if first == "yes" else set())
    if want in ("yes", "no") and first in ("yes", "no") and not hedged & rest:
        same = first == want
        return Verdict(match=same, reason=f"{first} {'==' if same else '!='} {want} (first word)")
    got_num, want_num = _quantity(got), _quantity(want)
    if got_num is not None and want_num is not None:
        (got_values, got_unit), (want_values, want_unit) = got_num, want_num
        if got_unit and want_unit and got_unit != want_unit:
            return Verdict(match=False, reason=f"unit {got_unit} != {want_unit}")
        if any(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a in got_values for b in want_values):
            return Verdict(match=True, reason="numerically equal")
        return Verdict(match=False, reason=f"number {got!r} != {want!r}")
    if (got_num is None) != (want_num is None):
        return Verdict(match=False, reason=f"{got!r} vs {want!r}: one is a number, the other not")
    if _negated(got_words) != _negated(want_words):
        return Verdict(match=False, reason=f"{got!r} vs {want!r}: negated on one side only")
    if len(got_words) != len(want_words):
        return Verdict(match=False, reason=f"{got!r} vs {want!r}: {len(got_words)} words vs {len(want_words)}")
    if all(_same_word(g, w) for g, w in zip(got_words, want_words)):
        return Verdict(match=True, reason=f"{got!r} ~ {want!r}: same words up to plural or typo")
    return Verdict(match=False, reason=f"{got!r} vs {want!r}: different words")


def judge_answer(prediction: str, references: str | Sequence[str]) -> Verdict:
    """The verdict on a response (think block and all) against one reference or any of several."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError(f"no reference answer to judge {prediction[:60]!r} against")
    verdicts = [_judge_one(prediction, ref) for ref in refs]
    hit = next((v for v in verdicts if v.match), None)
    if hit is not None or len(verdicts) == 1:
        return hit or verdicts[0]
    return Verdict(match=False, reason="; ".join(v.reason for v in verdicts))


def answers_match(prediction: str, references: str | Sequence[str]) -> bool:
    """True when the response's final answer is equivalent to the reference (or one of the references)."""
    return judge_answer(prediction, references).match
