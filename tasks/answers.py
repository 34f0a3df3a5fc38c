"""Reading model answers: equivalent-expression and fuzzy answer matching, and response parsing
(``<think>...</think>`` then the answer; reasoning steps; path confidence from token log-probs)."""

from __future__ import annotations

import re

from keye_model.special_tokens import THINK_END, THINK_START
from tasks.generation import Generation


# ---- answers: equivalent-expression and fuzzy matching ------------------------------------------------
_WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_SYNONYMS = {"true": "yes", "correct": "yes", "yeah": "yes", "false": "no", "incorrect": "no"}
_FILLER = {"a", "an", "the", "is", "it", "its", "answer", "final", "there", "are", "of"}
_NEGATIONS = {"not", "no", "never", "isn't", "aren't", "none", "neither"}


def numeric_value(text: str) -> float | None:
    """``"3"``, ``"3.0"``, ``"three"``, ``"1/2"``, ``"50%"`` -> a float; anything else None."""
    t = text.strip().lower().rstrip(".").replace(",", "")
    if t in _WORD_NUMBERS:
        return float(_WORD_NUMBERS[t])
    if m := re.fullmatch(r"(-?\d+)\s*/\s*(\d+)", t):
        return int(m.group(1)) / int(m.group(2)) if int(m.group(2)) else None
    if m := re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*%", t):
        return float(m.group(1)) / 100
    try:
        return float(t)
    except ValueError:
        return None


def normalize_answer(text: str) -> list[str]:
    """Lower-cased words without punctuation, articles and filler; number words as digits; synonyms."""
    words = re.findall(r"[a-z0-9]+(?:[./][0-9]+)?%?|[a-z]+'[a-z]+", text.lower())
    out = []
    for w in words:
        w = _SYNONYMS.get(w, w)
        value = numeric_value(w)
        out.append(f"{value:g}" if value is not None else w)
    return [w for w in out if w not in _FILLER]


def answers_match(predicted: str, reference: str) -> bool:
    """True when two final answers are equivalent.

    Equal numbers (``"3"`` / ``"three"`` / ``"3.0"``), equal normalized words (case, punctuation,
    articles), the reference as a whole phrase inside a short un-negated prediction (``"It is a red
    circle."`` vs ``"circle"``), or a near-identical spelling (difflib ratio >= 0.85, both at least 5 characters).
    """
    import difflib

    p_val, r_val = numeric_value(predicted), numeric_value(reference)
    if p_val is not None and r_val is not None:
        return abs(p_val - r_val) <= 1e-6 * max(1.0, abs(r_val))
    p, r = normalize_answer(predicted), normalize_answer(reference)
    if not p or not r:
        return False
    if p == r:
        return True
    if len(p) <= 8 and not _NEGATIONS & set(p) and any(p[i:i + len(r)] == r for i in range(len(p) - len(r) + 1)):
        return True
    p_text, r_text = " ".join(p), " ".join(r)
    return min(len(p_text), len(r_text)) >= 5 and difflib.SequenceMatcher(None, p_text, r_text).ratio() >= 0.85


# ---- responses ------------------------------------------------------------------------------------
def split_response(text: str) -> tuple[str | None, str | None]:
    """``(thinking, answer)`` of ``<think>...</think> answer``; ``(None, None)`` when malformed."""
    m = re.fullmatch(rf"\s*{re.escape(THINK_START)}(.*?){re.escape(THINK_END)}(.*)", text, flags=re.DOTALL)
    if not m or THINK_START in m.group(2) or THINK_END in m.group(2):
        return None, None
    answer = re.sub(r"^\s*(final answer|answer)\s*[:\-]\s*", "", m.group(2).strip(), flags=re.IGNORECASE)
    return m.group(1).strip(), (answer.strip() or None)


def reasoning_steps(thinking: str) -> list[str]:
    """Non-empty lines; a one-line chain is split into sentences."""
    lines = [line.strip() for line in thinking.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s for s in re.split(r"(?<=[.!?])\s+", lines[0]) if s.strip()]
    return lines


def path_confidence(generation: Generation) -> tuple[float | None, float | None]:
    """``(whole, step_wise)``: the mean token log-probability, and the minimum over steps of each
    step's mean, steps ending at tokens that contain a newline.

    Example: logprobs [-1, -1, -3, -2] with tokens ["a", "b\\n", "c", "d"] -> steps [-1, -1] and
    [-3, -2]: whole = -1.75, step-wise = min(-1.0, -2.5) = -2.5.
    """
    lps = generation.token_logprobs
    if not lps:
        return None, None
    whole = sum(lps) / len(lps)
    if len(generation.tokens) != len(lps):
        return whole, whole
    step_means, current = [], []
    for token, lp in zip(generation.tokens, lps):
        current.append(lp)
        if "\n" in token:
            step_means.append(sum(current) / len(current))
            current = []
    if current:
        step_means.append(sum(current) / len(current))
    return whole, min(step_means)


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that already occurred earlier in the text (0 for short texts)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
