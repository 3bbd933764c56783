"""Training targets of the distance head (bundle.data.targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.io.images import read_mask
from bundle.data.targets import NucleusTargetsd, instance_labels, mask_kind, normalized_distance
from tests.helpers import MONUSEG


def _class_map() -> np.ndarray:
    """Six separate 3x3 nuclei, 0/128/255 (128 their borders, 255 their centres): a class map, not ids."""
    m = np.zeros((8, 24), np.uint8)
    for x in range(0, 24, 4):
        m[1:4, x:x + 3] = 128
        m[2, x + 1] = 255
    m[5:8, :] = 0
    return m

LABEL_CASES = [
    # (mask, expected number of instances)
    (np.array([[0, 1, 1, 0, 1], [0, 1, 0, 0, 1]], np.uint8), 2),  # binary: connected components
    (np.array([[0, 255, 255, 0, 255]], np.uint8), 2),  # binary 0/255
    (np.array([[0, 3, 3, 5, 5]], np.uint16), 2),  # instance ids kept (touching)
    (np.zeros((1, 4, 4), np.uint8), 0),  # channel-first, empty
    (_class_map(), 6),  # 0/128/255 class map: connected components of its non-zero pixels, not 2 "ids"
    (_class_map()[:, :4], 1),  # one nucleus of it
]

KIND_CASES = [
    (np.array([[0, 255, 255, 0, 255]], np.uint8), "binary"),
    (np.array([[0, 3, 3, 5, 5]], np.uint16), "instances"),
    (np.array([[0, 1, 0, 2, 0, 3]], np.uint16), "instances"),
    (_class_map(), "classes"),
    (np.array([[1, 0, 1, 0, 1, 0, 2, 0, 2, 0, 2]], np.uint8), "classes"),  # two values, three regions each
    (_class_map()[:, :4], "classes"),  # one nucleus: a 255 centre inside a 128 ring
    (_class_map()[:, :8], "classes"),  # two nuclei
    (np.array([[0, 0, 0, 0], [0, 3, 3, 0], [0, 3, 5, 5]], np.uint16), "instances"),  # touching, each at the background
]


@pytest.mark.parametrize("mask, n", LABEL_CASES)
def test_instance_labels(mask, n):
    labels = instance_labels(mask)
    assert labels.dtype == np.int32 and labels.ndim == 2
    assert len(np.unique(labels[labels > 0])) == n


@pytest.mark.parametrize("mask, kind", KIND_CASES)
def test_mask_kind(mask, kind):
    assert mask_kind(mask) == kind


def test_mask_kind_of_real_instance_masks():
    for path in sorted((MONUSEG / "masks").glob("*.png")):
        assert mask_kind(read_mask(path)) == "instances", path


def test_instance_labels_checks_shape():
    with pytest.raises(ValueError, match=r"\(H, W\) or \(1, H, W\)"):
        instance_labels(np.zeros((2, 4, 4)))


def test_normalized_distance_of_two_touching_squares():
    labels = np.zeros((9, 16), np.int32)
    labels[1:8, 1:8] = 1
    labels[1:8, 8:15] = 2  # touches 1 along a column
    dist = normalized_distance(labels)
    assert dist.dtype == np.float32
    assert dist[labels == 0].max() == 0 and dist[labels > 0].min() > 0 and dist.max() == 1
    # one peak per square, at its centre; low values on the shared border
    assert dist[4, 4] == 1 and dist[4, 11] == 1
    assert dist[4, 7] < 0.5 and dist[4, 8] < 0.5


def test_normalized_distance_counts_the_image_edge_as_border():
    labels = np.ones((5, 5), np.int32)
    dist = normalized_distance(labels)
    assert dist[2, 2] == 1 and dist[0, 0] < dist[2, 2]


@pytest.mark.parametrize("as_meta", [True, False])
def test_nucleus_targetsd_on_a_real_mask(as_meta):
    mask = read_mask(sorted((MONUSEG / "masks").glob("*.png"))[0])[None].astype(np.float32)
    value = MetaTensor(torch.from_numpy(mask)) if as_meta else mask
    out = NucleusTargetsd("label")({"label": value, "image": "unchanged"})
    target = out["label"]
    assert tuple(target.shape) == (2,) + mask.shape[1:]
    assert isinstance(target, MetaTensor if as_meta else np.ndarray) and target.dtype in (torch.float32, np.float32)
    target = np.asarray(target)
    np.testing.assert_array_equal(target[0], mask[0] > 0)
    assert target[1].max() == 1.0 and (target[1][target[0] == 0] == 0).all()
    assert out["image"] == "unchanged"
