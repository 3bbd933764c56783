"""Stain augmentation and normalisation transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.io.images import read_rgb
from bundle.data.transforms import MacenkoNormalize, MacenkoNormalized, RandHEDJitter, RandHEDJitterd
from tests.helpers import first_sample


def _real_tile() -> np.ndarray:
    return np.moveaxis(read_rgb(first_sample()), -1, 0).astype(np.float32)  # (3, H, W) 0..255


JITTER_CASES = [
    ({"prob": 1.0, "sigma": 0.05, "bias": 0.02}, (3, 256, 256)),
    ({"prob": 1.0, "sigma": 0.2, "bias": 0.1}, (3, 64, 48)),
]


@pytest.mark.parametrize("kwargs, shape", JITTER_CASES)
def test_hed_jitter_shape_range_and_change(kwargs, shape):
    img = torch.as_tensor(_real_tile()[:, : shape[1], : shape[2]] / 255.0)
    jitter = RandHEDJitter(**kwargs)
    jitter.set_random_state(0)
    out = jitter(img)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - img).abs().mean()) > 1e-3


def test_hed_jitter_without_perturbation_is_identity_on_tissue():
    img = torch.as_tensor(_real_tile() / 255.0)
    out = RandHEDJitter(prob=1.0, sigma=0.0, bias=0.0)(img)
    assert float((out - img).abs().mean()) < 0.02  # HED round trip only


def test_hed_jitter_dict_same_draw_and_prob_zero():
    img = torch.as_tensor(_real_tile() / 255.0)
    d = RandHEDJitterd(keys=["a", "b"], prob=1.0).set_random_state(1)({"a": img, "b": img.clone()})
    assert torch.equal(d["a"], d["b"])
    assert RandHEDJitter(prob=0.0)(img) is img


def test_macenko_on_real_tile_and_blank_tile():
    img = _real_tile()
    out = MacenkoNormalized(keys="image")({"image": torch.as_tensor(img)})["image"]
    assert out.shape == img.shape and float(out.max()) <= 255.0
    blank = np.full((3, 32, 32), 250.0, np.float32)
    with pytest.warns(UserWarning, match="Macenko normalisation skipped"):
        assert MacenkoNormalize()(blank) is blank


@pytest.mark.parametrize("transform, message", [
    (RandHEDJitter(prob=1.0), r"channel-first RGB views \(3k, H, W\)"), (MacenkoNormalize(), r"channel-first RGB image \(3, H, W\)"),
])
def test_channel_errors(transform, message):
    with pytest.raises(ValueError, match=message):
        transform(np.zeros((4, 8, 8), np.float32))
