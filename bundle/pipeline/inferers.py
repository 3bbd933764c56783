"""Test-time augmentation by flips around any MONAI inferer."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from monai.inferers import Inferer

__all__ = ["FLIPS", "FlipTTAInferer"]

FLIPS = ((), (2,), (3,), (2, 3))  # identity, vertical, horizontal, both (dims of a (B, C, H, W) batch)


class FlipTTAInferer(Inferer):
    """Run ``inferer`` on the input and on its flips, flip each output back and average the probabilities.

    The outputs are logits whose sigmoid is a probability (nucleus, normalised distance); the mean is taken over
    the sigmoids and returned as logits again, so post-processing is the same with and without augmentation.

    Args:
        inferer: the inferer to wrap, e.g. MONAI's ``SlidingWindowInferer``.
        flips: tensor dims flipped in each pass; ``[[]]`` (identity only) turns augmentation off. Default: the
            identity and the three flips of the two spatial axes (4 passes).

    Shapes: (B, C_in, H, W) -> the wrapped inferer's output (B, C_out, H, W).

    Raises:
        ValueError: ``flips`` is empty or names a dim other than 2 and 3.
    """

    def __init__(self, inferer: Callable[..., torch.Tensor], flips: Optional[Sequence[Sequence[int]]] = None):
        super().__init__()
        self.inferer = inferer
        self.flips = [tuple(f) for f in (FLIPS if flips is None else flips)]
        if not self.flips or any(d not in (2, 3) for f in self.flips for d in f):
            raise ValueError(f"flips must be a non-empty list of dims among (2, 3), got {flips}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.flips == [()]:
            return self.inferer(inputs, network, *args, **kwargs)
        total: Optional[torch.Tensor] = None
        for dims in self.flips:
            x = torch.flip(inputs, dims) if dims else inputs
            y = self.inferer(x, network, *args, **kwargs)
            prob = torch.sigmoid((torch.flip(y, dims) if dims else y).float())
            total = prob if total is None else total + prob
        mean = total / len(self.flips)
        return torch.logit(mean.clamp(1e-6, 1 - 1e-6))
