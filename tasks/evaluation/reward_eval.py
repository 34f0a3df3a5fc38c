"""Held-out pairwise accuracy of the reward model (Keye-Reward), in ``no_think`` and ``think`` modes.

The pairs are built from the easy-vqa TEST split, which no training mix holds: an image, its question,
and two responses of one of two kinds, alternating:

- ``correctness``: the right answer against a wrong answer of the same kind (yes/no, a shape, a colour);
- ``length``: the right answer against the same right answer padded with filler sentences. Both are
  right; the concise one is better (SPEC.md: the judge must not prefer length). The filler here is not
  the training filler (``tasks.preference.FILLER``), so the judge is scored on length, not on words.

Responses are written as the training pairs hold them (``tasks.preference.no_think_response``) and the
prompt is the training one (``examples.judge_prompt`` with ``PAIR_TASK``). Each pair is asked in both
orders, so a judge that always answers the same letter scores exactly 0.5. The verdict is read by the
one rule ``keye_model.training.judge.parse_verdict``; an unparseable verdict counts as wrong.

Example: 2 pairs -> 4 judgments per mode; verdicts A, B, A, A against better letters A, B, B, A -> 0.75.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keye_model.training.examples import PAIR_TASK, judge_prompt
from keye_model.training.judge import VERDICTS, parse_verdict
from tasks.evaluation.answering import EvalModel, answer_all
from tasks.preference import no_think_response, padded

log = logging.getLogger(__name__)

#: Kinds of held-out pairs, in the order they alternate.
PAIR_KINDS = ("correctness", "length")
#: Filler for the held-out ``length`` pairs: none of it is in the training filler.
EVAL_FILLER = (
    "Let me state it once more to be completely clear.",
    "I am confident in this reply after checking it again.",
    "Nothing else in the picture changes this conclusion.",
    "Please note that this answer was considered with care.",
    "To sum up, that is what the question asks for.",
)
_SHAPES = ("circle", "rectangle", "triangle")
_YES_NO = ("yes", "no")
#: A no_think verdict is one letter and a stop token; a few more tokens show whether it says more.
NO_THINK_TOKENS = 8


@dataclass(frozen=True, kw_only=True)
class JudgePair:
    """One held-out pair: the question about an image, the better and the worse response."""

    id: str
    """``easy-vqa-test-<index>``: the test question it is made from."""
    image: str
    """Path of the question's image."""
    question: str
    """The question both responses answer."""
    better: str
    """The response a good judge prefers."""
    worse: str
    """The other response."""
    kind: str
    """One of PAIR_KINDS."""


def _answer_kind(answer: str, colours: Sequence[str]) -> tuple[str, ...]:
    """The answers of the same kind as ``answer``: yes/no, the shapes, or the colours."""
    for group in (_YES_NO, _SHAPES, tuple(colours)):
        if answer in group:
            return group
    raise ValueError(f"easy-vqa answer {answer!r} is neither yes/no, a shape nor a colour")


def reward_pairs(num_pairs: int, seed: int = 0) -> list[JudgePair]:
    """``num_pairs`` pairs from easy-vqa test questions picked by ``seed``, kinds alternating."""
    import easy_vqa

    if num_pairs < 1:
        raise ValueError(f"reward evaluation needs at least one pair, got {num_pairs}")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    colours = [a for a in easy_vqa.get_answers() if a not in _YES_NO + _SHAPES]
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(questions)), min(num_pairs, len(questions))))
    pairs = []
    for n, i in enumerate(picked):
        right = answers[i]
        kind = PAIR_KINDS[n % len(PAIR_KINDS)]
        if kind == "correctness":
            worse = no_think_response(rng.choice([a for a in _answer_kind(right, colours) if a != right]))
        else:
            worse = no_think_response(padded(right, rng, EVAL_FILLER))
        pairs.append(
            JudgePair(
                id=f"easy-vqa-test-{i}",
                image=paths[image_ids[i]],
                question=questions[i],
                better=no_think_response(right),
                worse=worse,
                kind=kind,
            )
        )
    return pairs


def judgments(pairs: Sequence[JudgePair]) -> list[tuple[JudgePair, str, str, str]]:
    """Each pair in both orders: (pair, response A, response B, the better one's letter)."""
    return [item for p in pairs for item in ((p, p.better, p.worse, "A"), (p, p.worse, p.better, "B"))]


def pairwise_accuracy(verdicts: Sequence[str | None], letters: Sequence[str]) -> float:
    """Share of verdicts naming the better response's letter; None (unparseable) is wrong."""
    if len(verdicts) != len(letters) or not letters:
        raise ValueError(f"{len(verdicts)} verdicts for {len(letters)} judgments")
    if any(letter not in VERDICTS for letter in letters):
        raise ValueError(f"better letters must be in {VERDICTS}, got {sorted(set(letters))}")
    return sum(v == letter for v, letter in zip(verdicts, letters)) / len(letters)


def _conversation(pair: JudgePair, first: str, second: str, think: bool) -> list[dict[str, Any]]:
    text = judge_prompt(PAIR_TASK, pair.question, first, second, think)
    return [{"role": "user", "content": [{"type": "image", "image": pair.image}, {"type": "text", "text": text}]}]


def evaluate_reward_pairs(
    evaluator: EvalModel, num_pairs: int, seed: int = 0, max_new_tokens: int = 128
) -> dict[str, float]:
    """Held-out pairwise accuracy of a judge checkpoint, greedy, in both modes.

    ``max_new_tokens`` bounds a ``think`` judgment (assessment and verdict; one cut off is unparseable);
    ``no_think`` gets ``NO_THINK_TOKENS``. Returns ``reward/accuracy_no_think``, ``reward/accuracy_think``,
    ``reward/pairs`` (pairs; each is judged twice per mode), per kind ``reward/accuracy_<mode>/<kind>``
    (``length``: the concise answer against itself padded, where a length-biased judge falls below 0.5),
    and ``reward/unparseable_<mode>``, the share of judgments with no verdict.
    """
    pairs = reward_pairs(num_pairs, seed)
    asked = judgments(pairs)
    letters = [letter for *_, letter in asked]
    ids = [f"{p.id}-{letter}" for p, *_, letter in asked]
    metrics = {"reward/pairs": float(len(pairs))}
    for mode, think, tokens in (("no_think", False, NO_THINK_TOKENS), ("think", True, max_new_tokens)):
        conversations = [_conversation(p, a, b, think) for p, a, b, _ in asked]
        answers = answer_all(evaluator, conversations, [f"{i}-{mode}" for i in ids], max_new_tokens=tokens)
        verdicts = [parse_verdict(answer) for answer in answers]
        metrics[f"reward/accuracy_{mode}"] = pairwise_accuracy(verdicts, letters)
        metrics[f"reward/unparseable_{mode}"] = sum(v is None for v in verdicts) / len(verdicts)
        for kind in PAIR_KINDS:
            rows = [(v, letter) for v, (p, *_, letter) in zip(verdicts, asked) if p.kind == kind]
            if rows:
                metrics[f"reward/accuracy_{mode}/{kind}"] = pairwise_accuracy(*zip(*rows))
    log.info("reward model on %d held-out pairs: %s", len(pairs), metrics)
    return metrics
