"""Pure metrics on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest

from tasks.evaluation.metrics import multiple_choice_accuracy, parse_span, temporal_iou, temporal_scores, vqa_accuracy


def test_vqa_accuracy():
    # Single verdicts are tests/keye_model/test_answers.py's table, which also runs through vqa_accuracy.
    assert vqa_accuracy(["Two.", "the Circle", "dark red", ""], ["2", ["triangle", "circle"], "red", ""]) == 0.5
    assert vqa_accuracy(["Red", "circle", "no", "4"], ["red", "triangle", "No.", "four"]) == 0.75
    assert vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1"):
        vqa_accuracy(["a", "b"], ["a"])


@pytest.mark.parametrize(
    "text, span",
    [
        ("<|clip_time_start|>[2.5, 3.0]<|clip_time_end|>", (2.5, 3.0)),
        (
            "It happens <|clip_time_start|>12<|clip_time_end|> to <|clip_time_start|>15.5<|clip_time_end|>.",
            (12.0, 15.5),
        ),
        ("From 2.5 to 3.0 seconds.", (2.5, 3.0)),
        ("between 4 and 1 s", (1.0, 4.0)),  # reversed spans are put in order
        ("2.5 - 3.0 seconds", (2.5, 3.0)),
        ("the square shows at 4s-6s", (4.0, 6.0)),
        ("[0, 1.5]", (0.0, 1.5)),
        ("<think>maybe 1 - 2 s</think>from 7 to 9 seconds", (7.0, 9.0)),  # only the answer after </think>
        ("At 2.0 seconds.", None),
        ("I cannot tell.", None),
    ],
)
def test_parse_span(text, span):
    assert parse_span(text) == span


def test_temporal_iou_known_values():
    assert temporal_iou((2.0, 4.0), (3.0, 5.0)) == pytest.approx(1 / 3)
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0
    assert temporal_iou((1.0, 2.0), (1.0, 2.0)) == 1.0
    assert temporal_iou((2.0, 2.0), (2.0, 2.0)) == 1.0


def test_temporal_scores_worked_example():
    # (2, 4) vs (3, 5): errors 1 s each, IoU 1/3; (0, 2) vs (0, 2): exact; the third is unparsable.
    scores = temporal_scores([(2.0, 4.0), (0.0, 2.0), None], [(3.0, 5.0), (0.0, 2.0), (1.0, 2.0)])
    assert scores.num_samples == 3 and scores.num_parsed == 2
    assert scores.mae_start_s == pytest.approx(0.5)
    assert scores.mae_end_s == pytest.approx(0.5)
    assert scores.mae_center_s == pytest.approx(0.5)
    assert scores.mean_iou == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)
    assert scores.recall_at_0_3 == pytest.approx(2 / 3)
    assert scores.recall_at_0_5 == pytest.approx(1 / 3)
    assert scores.as_metrics()["temporal/recall_at_0_5"] == pytest.approx(1 / 3)
    none = temporal_scores([None], [(0.0, 1.0)])
    assert math.isnan(none.mae_start_s) and none.mean_iou == 0.0


def test_case_study_precision():
    # SPEC section 6: a 2-second event in a 26-second clip located to 0.1 s.
    scores = temporal_scores([parse_span("From 11.1 to 13.0 seconds.")], [(11.0, 13.0)])
    assert scores.mae_start_s == pytest.approx(0.1) and scores.mae_end_s == pytest.approx(0.0)
    assert scores.recall_at_0_5 == 1.0


def test_multiple_choice_accuracy():
    assert multiple_choice_accuracy(["A", None, "c", "D"], ["A", "B", "C", "A"]) == 0.5
    assert multiple_choice_accuracy([], []) == 0.0
