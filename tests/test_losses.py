"""The training loss (bundle.training.losses.NucleusLoss)."""

from __future__ import annotations

import pytest
import torch

from bundle.training.losses import NucleusLoss

SHAPE_CASES = [
    # (pred channels, target channels)
    (1, 1),
    (1, 2),  # a network without a distance head, trained on the two-channel targets
    (2, 2),
]


@pytest.mark.parametrize("pred_channels, target_channels", SHAPE_CASES)
def test_loss_is_a_finite_scalar_with_gradients(pred_channels, target_channels):
    torch.manual_seed(0)
    pred = torch.randn(2, pred_channels, 16, 16, requires_grad=True)
    target = torch.rand(2, target_channels, 16, 16)
    target[:, 0] = (target[:, 0] > 0.5).float()
    loss = NucleusLoss()(pred, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_distance_term_is_zero_for_a_perfect_distance_and_grows_with_error():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    distance = mask * 0.5
    target = torch.cat([mask, distance], 1)
    mask_logit = (mask * 2 - 1) * 20
    loss = NucleusLoss(lambda_distance=1.0)
    exact = loss(torch.cat([mask_logit, torch.logit(distance.clamp(1e-6, 1 - 1e-6))], 1), target)
    wrong = loss(torch.cat([mask_logit, torch.full_like(mask, 3.0)], 1), target)
    mask_only = NucleusLoss(lambda_distance=0.0)(torch.cat([mask_logit, torch.full_like(mask, 3.0)], 1), target)
    assert exact == pytest.approx(mask_only.item(), abs=1e-4)
    assert wrong > exact + 0.1


ERROR_CASES = [
    ((1, 2, 8, 8), (1, 1, 8, 8), r"has a distance head but the target has no distance channel"),
    ((1, 3, 8, 8), (1, 2, 8, 8), r"expects 1 or 2 channels"),
]


@pytest.mark.parametrize("pred_shape, target_shape, match", ERROR_CASES)
def test_loss_errors(pred_shape, target_shape, match):
    with pytest.raises(ValueError, match=match):
        NucleusLoss()(torch.zeros(pred_shape), torch.zeros(target_shape))
