"""Reading LongCoT paths: a well-formed ``<think>...</think>`` response split into its reasoning and final
answer, reasoning steps, path confidence from token log-probs, and repetition.

Whether an answer is right is not decided here: ``keye_model.answers`` is the one matcher (shared with the
RL reward and evaluation), and its ``split_thinking`` is the one think-tag splitter that ``split_response``
builds on.
"""

from __future__ import annotations

import re

from keye_model.answers import extract_answer, split_thinking
from keye_model.special_tokens import THINK_END, THINK_START
from tasks.generation import Generation


def split_response(text: str) -> tuple[str | None, str | None]:
    """``(thinking, final answer)`` of ``<think>...</think> answer``; ``(None, None)`` when malformed (no
    leading think block, or a second think tag). The answer is ``extract_answer``'s (no "Answer:" lead-in,
    the last ``\\boxed{}``), None when empty.

    Example: ``" <think>a\\nb</think> Answer: blue "`` -> ``("a\\nb", "blue")``; ``"blue"`` -> ``(None, None)``.
    """
    stripped = text.strip()
    if not stripped.startswith(THINK_START) or stripped.count(THINK_START) != 1 or stripped.count(THINK_END) != 1:
        return None, None
    thinking, answer = split_thinking(stripped)
    return thinking, (extract_answer(answer) or None)


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
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
