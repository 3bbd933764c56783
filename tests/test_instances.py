"""Instance splitting (bundle.pipeline.split) and instance metrics (AJI, PQ, detection F1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import h_maxima

from bundle.io.images import read_mask
from bundle.evaluation.metrics import aggregated_jaccard_index, detection_f1, instance_overlaps, panoptic_quality
from bundle.pipeline.split import SplitNucleusChannelsd, binary_mask, h_maxima_markers, split_instances
from bundle.data.targets import instance_labels, normalized_distance
from tests.helpers import MONUSEG


def _disc(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


SPLIT_CASES = [
    ([((20, 20), 8)], 1),
    ([((20, 16), 8), ((20, 29), 8)], 2),  # two touching discs
    ([((15, 15), 6), ((15, 45), 6), ((45, 30), 7)], 3),  # three separate nuclei
    ([], 0),
]


@pytest.mark.parametrize("discs, n_instances", SPLIT_CASES)
def test_split_instances_counts(discs, n_instances):
    prob = np.zeros((64, 64), np.float32)
    for centre, radius in discs:
        prob[_disc(prob.shape, centre, radius)] = 0.9
    labels = split_instances(prob)
    assert labels.dtype == np.int32 and labels.shape == prob.shape
    assert labels.max() == n_instances and len(np.unique(labels)) == n_instances + 1
    assert ((labels > 0) == (prob > 0.5)).all()


@pytest.mark.parametrize("discs, n_instances", SPLIT_CASES)
def test_split_instances_with_distance_markers(discs, n_instances):
    truth = np.zeros((64, 64), np.int32)
    for i, (centre, radius) in enumerate(discs, start=1):
        truth[_disc(truth.shape, centre, radius) & (truth == 0)] = i
    labels = split_instances((truth > 0).astype(np.float32), distance=normalized_distance(truth)[None])
    assert labels.max() == n_instances
    if n_instances:
        assert aggregated_jaccard_index(truth, labels) > 0.95


H_MAXIMA_CASES = [
    # (seed, blobs, height, shape): random bumps, some touching (also diagonally) and at the borders
    (0, 12, 0.2, (64, 64)),
    (1, 40, 0.2, (96, 80)),
    (2, 40, 0.05, (96, 80)),
    (3, 25, 0.6, (64, 64)),  # groups lower than the height get no marker
]


@pytest.mark.parametrize("seed, blobs, height, shape", H_MAXIMA_CASES)
def test_h_maxima_markers_equal_skimage_on_the_whole_image(seed, blobs, height, shape):
    rng = np.random.default_rng(seed)
    energy = np.zeros(shape, np.float32)
    energy[rng.integers(0, shape[0], blobs), rng.integers(0, shape[1], blobs)] = rng.uniform(0.3, 1.0, blobs)
    energy = ndimage.gaussian_filter(energy, 3.0)
    energy /= energy.max()
    mask = energy > 0.05
    energy = (energy + rng.uniform(0, 0.01, shape).astype(np.float32)) * mask
    expected = h_maxima(energy, height).astype(bool) & mask
    np.testing.assert_array_equal(h_maxima_markers(energy, mask, height), expected)


def test_h_maxima_markers_on_an_empty_mask():
    assert not h_maxima_markers(np.zeros((8, 8), np.float32), np.zeros((8, 8), bool), 0.2).any()


def test_split_instances_distance_checks_shape():
    with pytest.raises(ValueError, match=r"distance is 8x8, prob is 16x16"):
        split_instances(np.ones((16, 16)), distance=np.ones((8, 8)))
    with pytest.raises(ValueError, match=r"distance must be \(H, W\) or \(1, H, W\)"):
        split_instances(np.ones((16, 16)), distance=np.ones((2, 16, 16)))


SPLIT_CHANNEL_CASES = [
    # (key shapes in, key shapes out)
    ({"pred": (2, 8, 8), "label": (2, 8, 8)}, {"pred": (1, 8, 8), "pred_distance": (1, 8, 8), "label": (1, 8, 8), "label_distance": (1, 8, 8)}),
    ({"pred": (2, 8, 8)}, {"pred": (1, 8, 8), "pred_distance": (1, 8, 8)}),  # inference: no label
    ({"pred": (2, 8, 8), "label": None}, {"pred": (1, 8, 8), "pred_distance": (1, 8, 8), "label": None}),  # evaluator: label None
    ({"pred": (1, 8, 8), "label": (1, 8, 8)}, {"pred": (1, 8, 8), "label": (1, 8, 8)}),  # no distance head
]


@pytest.mark.parametrize("shapes_in, shapes_out", SPLIT_CHANNEL_CASES)
def test_split_nucleus_channels(shapes_in, shapes_out):
    data = {k: None if s is None else torch.arange(np.prod(s), dtype=torch.float32).reshape(s) for k, s in shapes_in.items()}
    out = SplitNucleusChannelsd(["pred", "label"], allow_missing_keys=True)(data)
    assert {k: None if v is None else tuple(v.shape) for k, v in out.items()} == shapes_out
    if "pred_distance" in out:
        torch.testing.assert_close(out["pred_distance"][0], data["pred"][1])
        torch.testing.assert_close(out["pred"][0], data["pred"][0])


def test_split_nucleus_channels_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"pred: expected \(1, H, W\) or \(2, H, W\)"):
        SplitNucleusChannelsd("pred")({"pred": torch.zeros(3, 4, 4)})


def test_binary_mask_removes_specks_fills_holes_and_checks_shape():
    prob = np.zeros((1, 32, 32))
    prob[0, 5:15, 5:15] = 1.0
    prob[0, 9, 9] = 0.0  # hole
    prob[0, 25, 25] = 1.0  # speck
    mask = binary_mask(prob, min_size=10)
    assert mask[9, 9] and not mask[25, 25] and mask.sum() == 100
    with pytest.raises(ValueError, match=r"prob must be \(H, W\) or \(1, H, W\)"):
        binary_mask(np.zeros((2, 4, 4)))


def _shipped_instances():
    return read_mask(sorted((MONUSEG / "masks").glob("*.png"))[0]).astype(np.int64)


def test_split_instances_on_a_real_mask():
    truth = _shipped_instances()
    labels = split_instances((truth > 0).astype(np.float32), min_distance=4)
    n_true = len(np.unique(truth)) - 1
    assert 0.6 * n_true <= labels.max() <= 1.5 * n_true
    assert aggregated_jaccard_index(truth, labels) > 0.6
    # with the truth's own normalised distance as markers the split is (nearly) exact
    exact = split_instances((truth > 0).astype(np.float32), distance=normalized_distance(instance_labels(truth)))
    assert aggregated_jaccard_index(truth, exact) > 0.97


def test_metrics_of_identical_and_empty_maps():
    truth = _shipped_instances()
    assert aggregated_jaccard_index(truth, truth) == 1.0
    assert panoptic_quality(truth, truth)["pq"] == pytest.approx(1.0)
    assert detection_f1(truth, truth) == 1.0
    empty = np.zeros_like(truth)
    assert aggregated_jaccard_index(empty, empty) == 1.0 and panoptic_quality(empty, empty)["pq"] == 1.0
    assert aggregated_jaccard_index(truth, empty) == 0.0
    assert panoptic_quality(truth, empty)["pq"] == 0.0 and detection_f1(truth, empty) == 0.0
    shifted = np.roll(truth, 1, axis=1)
    assert 0.7 < aggregated_jaccard_index(truth, shifted) < 1.0


def test_hand_computed_merge():
    truth = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = np.ones((2, 4), int) * 7  # one prediction covering both nuclei, arbitrary id
    o = instance_overlaps(truth, pred)
    assert o["true"].tolist() == [0, 1] and o["pred"].tolist() == [0, 0]
    assert o["inter"].tolist() == [4, 4] and o["union"].tolist() == [8, 8]
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(8 / 16)
    pq = panoptic_quality(truth, pred)
    assert (pq["tp"], pq["fp"], pq["fn"], pq["pq"]) == (0, 1, 2, 0.0)
    assert detection_f1(truth, pred) == pytest.approx(2 / 3)  # centroid (0.5, 1.5) lies in one nucleus


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_quality_counts_as_monai_does(seed):
    """The sparse PQ equals MONAI's ``compute_panoptic_quality`` on split real nuclei (and random over-splits)."""
    from monai.metrics import compute_panoptic_quality

    truth = _shipped_instances()
    rng = np.random.default_rng(seed)
    pred = np.roll(truth, seed, axis=0) * (rng.random(truth.max() + 1) > 0.2)[np.roll(truth, seed, axis=0)]
    pred = np.where((pred > 0) & (rng.random(pred.shape) < 0.3), pred + truth.max(), pred)  # fragments
    counts = compute_panoptic_quality(torch.as_tensor(pred.astype(np.int64)), torch.as_tensor(truth.astype(np.int64)),
                                      match_iou_threshold=0.5, output_confusion_matrix=True)
    tp, fp, fn, iou_sum = (float(v) for v in counts[:4])
    ours = panoptic_quality(truth, pred)
    assert (ours["tp"], ours["fp"], ours["fn"]) == (tp, fp, fn)
    assert ours["sq"] * ours["tp"] == pytest.approx(iou_sum, rel=1e-6)


def test_metrics_memory_follows_pixels_not_instance_counts():
    """50,000 one-pixel predictions against 50,000 true ones: a dense pair table would need 20 GB."""
    side = 500
    truth = np.arange(1, side * side + 1).reshape(side, side) * (np.indices((side, side)).sum(0) % 5 == 0)
    pred = np.roll(truth, 1, axis=1)
    assert truth.max() > 40000 and 0.0 <= aggregated_jaccard_index(truth, pred) <= 1.0
    assert panoptic_quality(truth, pred)["tp"] == 0


def test_instance_shape_mismatch():
    with pytest.raises(ValueError, match="differs from truth shape"):
        instance_overlaps(np.zeros((2, 3)), np.zeros((3, 2)))


def test_evaluate_instances_script_on_crops(tmp_path):
    import json

    import torch

    from bundle.config_io import load_config
    from scripts.evaluate_instances import main

    net = load_config("inference").get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    out = tmp_path / "instances.json"
    assert main(["--dataset_dir", str(MONUSEG), "--val_fraction", "0.5", "--model", str(tmp_path / "model.pt"), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["images"]) == 2
    for key in ("aji", "pq", "dq", "sq", "f1"):
        assert 0.0 <= result["mean"][key] <= 1.0


def test_truth_markers_split_a_perfect_mask_almost_exactly():
    from scripts.evaluate_instances import truth_marker_split

    truth = instance_labels(_shipped_instances())
    labels = truth_marker_split((truth > 0).astype(np.float32), truth)
    assert aggregated_jaccard_index(truth, labels) > 0.95


def test_evaluation_splits_nuclei_as_the_pipeline_does():
    """configs/evaluate.json (merged over train.json, which has no splitter) repeats inference.json's splitter: the
    figures it reports are those of what every entry point runs, for each variant's settings."""
    from bundle.config_io import load_config

    for variant in ("full", "compact"):
        evaluate = load_config(["train", "evaluate"], variant=variant)
        inference = load_config("inference", variant=variant)
        assert evaluate.get_parsed_content("splitter") == inference.get_parsed_content("splitter"), variant
