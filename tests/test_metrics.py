"""Per-image and pooled segmentation metrics."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.evaluation.metrics import confusion_counts, scores_from_counts, summarize

P = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
T = np.array([[1, 0, 0, 0], [1, 1, 1, 0]])

COUNT_CASES = [
    (P, T, {"tp": 2, "fp": 1, "fn": 2, "tn": 3}, {"dice": 4 / 7, "iou": 2 / 5, "precision": 2 / 3, "recall": 2 / 4}),
    (np.zeros((3, 3)), np.zeros((3, 3)), {"tp": 0, "fp": 0, "fn": 0, "tn": 9}, {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),
    (np.zeros((2, 2)), np.ones((2, 2)) * 7, {"tp": 0, "fp": 0, "fn": 4, "tn": 0}, {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0}),
]


@pytest.mark.parametrize("pred, target, counts, scores", COUNT_CASES)
def test_counts_and_scores(pred, target, counts, scores):
    assert confusion_counts(pred, target) == counts
    assert scores_from_counts(counts) == pytest.approx(scores)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 4\) differs from truth shape \(4, 2\)"):
        confusion_counts(P, T.T)


def test_summary_mean_and_pooled():
    rows = []
    for pred, target in [(P, T), (np.ones((4, 4)), np.ones((4, 4)))]:
        c = confusion_counts(pred, target)
        rows.append({**c, **scores_from_counts(c)})
    s = summarize(rows)
    assert s["mean_dice"] == pytest.approx((4 / 7 + 1.0) / 2)
    assert s["pooled_dice"] == pytest.approx(2 * 18 / (2 * 18 + 1 + 2))
    assert s["num_images"] == 2
    assert summarize([]) == {}
