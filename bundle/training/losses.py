"""Training loss of the nucleus network: Dice + cross-entropy on the mask, MSE on the normalised distance."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceCELoss

__all__ = ["NucleusLoss", "distance_loss"]


def distance_loss(distance: torch.Tensor, target: torch.Tensor, nucleus: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a predicted normalised distance to its target, over all pixels plus over nucleus pixels.

    Args:
        distance: predicted normalised distance in [0, 1] (the sigmoid of the distance logit), (B, 1, H, W).
        target: normalised distance target, (B, 1, H, W).
        nucleus: 1 inside nuclei, 0 elsewhere, (B, 1, H, W).
    """
    squared = (distance - target) ** 2
    return squared.mean() + (squared * nucleus).sum() / nucleus.sum().clamp(min=1.0)


class NucleusLoss(nn.Module):
    """Dice + binary cross-entropy on the nucleus logit, plus (with a distance head) the mean squared error of the
    sigmoid of the distance logit to the normalised distance target, over all pixels and over nucleus pixels.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        lambda_distance: weight of the distance terms.

    Shapes: ``pred`` (B, 1, H, W) logits, or (B, 2, H, W) with the distance logit last; ``target`` (B, 1, H, W)
    binary mask, or (B, 2, H, W) mask and normalised distance (:class:`bundle.data.targets.NucleusTargetsd`).
    A one-channel ``pred`` is scored on the mask only (networks without a distance head).

    Raises:
        ValueError: ``pred`` has two channels but ``target`` has no distance channel, or either has more than two.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, lambda_distance: float = 1.0):
        super().__init__()
        self.mask_loss = DiceCELoss(sigmoid=True, batch=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        self.lambda_distance = lambda_distance

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] > 2 or target.shape[1] > 2:
            raise ValueError(f"NucleusLoss expects 1 or 2 channels, got pred {list(pred.shape)}, target {list(target.shape)}")
        if pred.shape[1] == 2 and target.shape[1] != 2:
            raise ValueError(
                f"the network has a distance head but the target has no distance channel (target {list(target.shape)}); "
                "make the targets with bundle.data.targets.NucleusTargetsd"
            )
        loss = self.mask_loss(pred[:, :1], target[:, :1])
        if pred.shape[1] == 1:
            return loss
        distance = torch.sigmoid(pred[:, 1:].float())
        return loss + self.lambda_distance * distance_loss(distance, target[:, 1:].float(), target[:, :1].float())
