"""Scoring functions with no model in them: VQA answers, temporal spans, multiple-choice letters.

Everything here is pure (strings and numbers in, numbers out) so each rule has a known-answer test.

- VQA: ``vqa_accuracy`` counts the answers that ``keye_model.answers.answers_match`` (the one matcher, shared
  with the RL reward and LongCoT) judges right: "Two." and "2" match; "red" and "dark red" do not.
- Temporal localization: ``parse_span`` reads a (start, end) in seconds out of model text, in the
  special-token form ``<|clip_time_start|>[2.5, 3.0]<|clip_time_end|>`` or in words ("from 2.5 to 3.0
  seconds", "2.5 - 3.0 s", "[2.5, 3.0]"); ``temporal_scores`` gives mean absolute errors of start, end
  and centre, mean IoU and recall at IoU 0.3 / 0.5.
  Worked example: predicted [2.0, 4.0], true [3.0, 5.0]: start and end errors 1.0 s, centre error
  |3.0 - 4.0| = 1.0 s, intersection 1.0 s, union 3.0 s, IoU 0.333 -> a hit at 0.3, a miss at 0.5.
- Multiple choice: ``multiple_choice_accuracy`` scores the letters ``keye_model.answers.extract_choice``
  finds in "The answer is (B)", "B.", "b".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keye_model.answers import answers_match
from keye_model.special_tokens import CLIP_TIME_END, CLIP_TIME_START, THINK_END

# ---- VQA ------------------------------------------------------------------------------------------


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> float:
    """Share of predictions matching their references (``answers_match``: one reference or any of several);
    0.0 for no samples."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} reference answers")
    if not predictions:
        return 0.0
    return sum(answers_match(p, a) for p, a in zip(predictions, answers)) / len(predictions)


# ---- temporal localization -----------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_UNIT = r"\s*(?:s|sec|secs|seconds?)?"
#: Span forms in words, tried in order on text with the clip-time tags already handled.
_SPAN_FORMS = (
    re.compile(rf"\[\s*{_NUMBER}{_UNIT}\s*,\s*{_NUMBER}{_UNIT}\s*\]", re.I),
    re.compile(rf"(?:from|between)\s+{_NUMBER}{_UNIT}\s+(?:to|and|until|till)\s+{_NUMBER}", re.I),
    re.compile(rf"{_NUMBER}{_UNIT}\s*(?:-|to|~)\s*{_NUMBER}{_UNIT}", re.I),
)
_TAGGED = re.compile(re.escape(CLIP_TIME_START) + r"(.*?)" + re.escape(CLIP_TIME_END), re.S)


def parse_span(text: str) -> tuple[float, float] | None:
    """(start_s, end_s) named in model text, or None when it names no span.

    Clip-time tags win: ``<|clip_time_start|>[2.5, 3.0]<|clip_time_end|>`` or two tags holding one time
    each. Otherwise the first of "[t1, t2]", "from/between t1 to/and t2", "t1 - t2 seconds". A reversed
    span is put in order. Only the text after a ``</think>`` is read.
    """
    text = text.rsplit(THINK_END, 1)[-1]
    tagged = _TAGGED.findall(text)
    if tagged:
        numbers = [float(n) for part in tagged for n in re.findall(_NUMBER, part)]
        if len(numbers) >= 2:
            return _ordered(numbers[0], numbers[1])
    for form in _SPAN_FORMS:
        match = form.search(text)
        if match:
            return _ordered(float(match.group(1)), float(match.group(2)))
    return None


def _ordered(a: float, b: float) -> tuple[float, float]:
    return (a, b) if a <= b else (b, a)


def temporal_iou(predicted: tuple[float, float], truth: tuple[float, float]) -> float:
    """Intersection over union of two [start, end] spans in seconds; two equal points give 1.0."""
    intersection = max(0.0, min(predicted[1], truth[1]) - max(predicted[0], truth[0]))
    union = max(predicted[1], truth[1]) - min(predicted[0], truth[0])
    if union <= 0.0:
        return 1.0 if predicted == truth else 0.0
    return intersection / union


@dataclass(frozen=True, kw_only=True)
class TemporalScores:
    """Localization quality over a set of queries (MAE over parsed answers; IoU and recall over all)."""

    num_samples: int
    """Queries scored."""
    num_parsed: int
    """Answers from which a span could be read; the others count as IoU 0."""
    mae_start_s: float
    """Mean |predicted start - true start| in seconds over parsed answers (NaN when none parsed)."""
    mae_end_s: float
    """Mean |predicted end - true end| in seconds over parsed answers (NaN when none parsed)."""
    mae_center_s: float
    """Mean distance between predicted and true span centres, seconds (NaN when none parsed)."""
    mean_iou: float
    """Mean temporal IoU over all queries."""
    recall_at_0_3: float
    """Share of all queries with IoU >= 0.3."""
    recall_at_0_5: float
    """Share of all queries with IoU >= 0.5."""

    def as_metrics(self, prefix: str = "temporal/") -> dict[str, float]:
        """Flat ``{prefix + field: value}`` (counts as floats)."""
        return {f"{prefix}{name}": float(value) for name, value in vars(self).items()}


def temporal_scores(
    predicted: Sequence[tuple[float, float] | None], truth: Sequence[tuple[float, float]]
) -> TemporalScores:
    """Score predicted spans (None = unparsable answer) against the true spans, in order."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted spans for {len(truth)} true spans")
    pairs = [(p, t) for p, t in zip(predicted, truth) if p is not None]
    ious = [temporal_iou(p, t) if p is not None else 0.0 for p, t in zip(predicted, truth)]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return TemporalScores(
        num_samples=len(truth),
        num_parsed=len(pairs),
        mae_start_s=mean([abs(p[0] - t[0]) for p, t in pairs]),
        mae_end_s=mean([abs(p[1] - t[1]) for p, t in pairs]),
        mae_center_s=mean([abs((p[0] + p[1]) / 2 - (t[0] + t[1]) / 2) for p, t in pairs]),
        mean_iou=mean(ious) if ious else 0.0,
        recall_at_0_3=mean([float(i >= 0.3) for i in ious]) if ious else 0.0,
        recall_at_0_5=mean([float(i >= 0.5) for i in ious]) if ious else 0.0,
    )


# ---- multiple choice -----------------------------------------------------------------------------


def multiple_choice_accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Share of predicted letters equal to the true ones (None = no letter found = wrong); 0.0 if empty."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted letters for {len(truth)} answers")
    if not truth:
        return 0.0
    return sum(p is not None and p.upper() == t.strip().upper() for p, t in zip(predicted, truth)) / len(truth)


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on ``n`` samples.

    Example: 0.9 on 1,000 questions -> (0.880, 0.917); two stages whose intervals overlap this much
    have not been shown to differ.
    """
    if n == 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
