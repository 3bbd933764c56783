"""Training loss of the nucleus network: Dice + cross-entropy (or Focal Tversky) on the mask, MSE on the
normalised distance."""

from __future__ import annotations

import torch
import torch.nn as nn
from typing import Optional

from monai.losses import DiceCELoss, TverskyLoss

__all__ = ["NucleusLoss", "FocalTverskyLoss", "distance_loss"]


def distance_loss(distance: torch.Tensor, target: torch.Tensor, nucleus: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a predicted normalised distance to its target, over all pixels plus over nucleus pixels.

    Args:
        distance: predicted normalised distance in [0, 1] (the sigmoid of the distance logit), (B, 1, H, W).
        target: normalised distance target, (B, 1, H, W).
        nucleus: 1 inside nuclei, 0 elsewhere, (B, 1, H, W).
    """
    squared = (distance - target) ** 2
    return squared.mean() + (squared * nucleus).sum() / nucleus.sum().clamp(min=1.0)


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss (Abraham and Khan 2019) on logits: ``(1 - TI) ** (1 / gamma)``, TI MONAI's Tversky index.

    Args:
        alpha: weight of false positives (MONAI ``TverskyLoss``'s alpha).
        beta: weight of false negatives; U-Net# (Stagys) uses 0.7, alpha 0.3.
        gamma: focal parameter, 4/3 in U-Net# (as in Abraham and Khan: exponent 1 / gamma = 0.75, which raises the
            loss of images whose index is already high less than that of hard ones).

    Shapes: ``pred`` (B, C, H, W) logits, ``target`` (B, C, H, W) binary; a scalar (the batch as one volume).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0):
        super().__init__()
        self.tversky = TverskyLoss(sigmoid=True, alpha=alpha, beta=beta, batch=True, reduction="none")
        self.gamma = float(gamma)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.tversky(pred, target).clamp(min=0.0) ** (1.0 / self.gamma)).mean()


class NucleusLoss(nn.Module):
    """Dice + binary cross-entropy on the nucleus logit, plus (with a distance head) the mean squared error of the
    sigmoid of the distance logit to the normalised distance target, over all pixels and over nucleus pixels.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        lambda_distance: weight of the distance terms.
        mask_loss: the mask term instead of Dice + cross-entropy (e.g. :class:`FocalTverskyLoss` for U-Net#);
            ``lambda_dice`` and ``lambda_ce`` then do not apply.

    Shapes: ``pred`` (B, 1, H, W) logits, or (B, 2, H, W) with the distance logit last; ``target`` (B, 1, H, W)
    binary mask, or (B, 2, H, W) mask and normalised distance (:class:`bundle.data.targets.NucleusTargetsd`).
    A one-channel ``pred`` is scored on the mask only (networks without a distance head).

    Raises:
        ValueError: ``pred`` has two channels but ``target`` has no distance channel, or either has more than two.
    """

    def __init__(
        self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, lambda_distance: float = 1.0, mask_loss: Optional[nn.Module] = None
    ):
        super().__init__()
        self.mask_loss = mask_loss if mask_loss is not None else DiceCELoss(sigmoid=True, batch=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
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
