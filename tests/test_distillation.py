"""Distillation from cached teacher maps (bundle.training.distillation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.errors import InputError
from bundle.training.distillation import DistillationLoss, LoadTeacherMapsd, TeacherTargetsd
from bundle.training.losses import NucleusLoss

LOSS_CASES = [
    # (kwargs, target channels)
    ({}, 2),
    ({}, 4),
    ({"lambda_teacher": 0.5}, 4),
    ({"lambda_teacher": 0.0, "lambda_distance": 0.5}, 4),
]


def _targets(channels: int) -> torch.Tensor:
    torch.manual_seed(0)
    target = torch.rand(2, channels, 16, 16)
    target[:, 0] = (target[:, 0] > 0.5).float()
    return target


@pytest.mark.parametrize("kwargs, target_channels", LOSS_CASES)
def test_loss_is_a_finite_scalar_with_gradients(kwargs, target_channels):
    pred = torch.randn(2, 2, 16, 16, requires_grad=True)
    loss = DistillationLoss(**kwargs)(pred, _targets(target_channels))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_loss_without_teacher_is_the_nucleus_loss():
    pred = torch.randn(2, 2, 16, 16)
    target = _targets(4)
    expected = NucleusLoss()(pred, target[:, :2])
    assert DistillationLoss(lambda_teacher=0.0)(pred, target) == pytest.approx(expected.item())
    assert DistillationLoss()(pred, target[:, :2]) == pytest.approx(expected.item())
    assert DistillationLoss()(pred, target) > expected  # the teacher terms add


def test_loss_rejects_other_shapes():
    with pytest.raises(ValueError, match="DistillationLoss expects"):
        DistillationLoss()(torch.randn(2, 1, 8, 8), _targets(4)[..., :8, :8])


def test_teacher_maps_load_and_follow_the_label(tmp_path):
    prob = np.random.rand(12, 10).astype(np.float16)
    np.savez(tmp_path / "a.npz", prob=prob, distance=(prob / 2).astype(np.float16))
    item = {"id": "a", "image": torch.zeros(3, 12, 10), "label": torch.zeros(2, 12, 10)}
    item = LoadTeacherMapsd("teacher", str(tmp_path))(item)
    assert item["teacher"].shape == (2, 12, 10) and item["teacher"].dtype == torch.float32
    np.testing.assert_allclose(item["teacher"][0].numpy(), prob.astype(np.float32))
    item = TeacherTargetsd("teacher")(item)
    assert "teacher" not in item and item["label"].shape == (4, 12, 10)


@pytest.mark.parametrize("case, message", [
    ("missing", "no teacher maps"), ("other size", "teacher maps are"), ("not an npz", "unreadable teacher maps"),
    ("cut short", "unreadable teacher maps"), ("without distance", "teacher maps without distance"),
])
def test_teacher_map_errors_name_the_file(tmp_path, case, message):
    path = tmp_path / "a.npz"
    maps = {"prob": np.zeros((12, 10), np.float16), "distance": np.zeros((12, 10), np.float16)}
    if case == "other size":
        np.savez(path, prob=np.zeros((4, 4), np.float16), distance=np.zeros((4, 4), np.float16))
    elif case == "not an npz":
        path.write_text("not an npz")
    elif case == "cut short":
        np.savez(path, **maps)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "without distance":
        np.savez(path, prob=maps["prob"])
    with pytest.raises(InputError, match=rf"a\.npz: {message}"):
        LoadTeacherMapsd("teacher", str(tmp_path))({"id": "a", "image": torch.zeros(3, 12, 10)})
