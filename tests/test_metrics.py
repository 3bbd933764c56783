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


def test_instance_scores_count_ratio():
    from bundle.evaluation.metrics import instance_scores

    true = np.zeros((20, 20), np.int32)
    true[2:6, 2:6], true[10:14, 10:14] = 1, 2
    pred = true.copy()
    pred[2:6, 4:6] = 3  # one true nucleus split in two
    scores = instance_scores(true, pred)
    assert (scores["n_true"], scores["n_pred"]) == (2, 3) and scores["count_ratio"] == pytest.approx(1.5)


def test_summaries_by_group_and_without_pixel_counts():
    from bundle.evaluation.metrics import summarize_groups

    rows = [{"dataset": "a", "aji": 0.5, "n_true": 10, "n_pred": 12}, {"dataset": "a", "aji": 0.7, "n_true": 10, "n_pred": 8},
            {"dataset": "b", "aji": 0.1, "n_true": 5, "n_pred": 10}, {"aji": 0.9, "n_true": 1, "n_pred": 1}]
    groups = summarize_groups(rows, "dataset")
    assert list(groups) == ["a", "b"] and groups["a"]["mean_aji"] == pytest.approx(0.6)
    assert groups["a"]["pooled_count_ratio"] == pytest.approx(1.0) and groups["b"]["num_images"] == 1
    assert "pooled_dice" not in summarize(rows)
