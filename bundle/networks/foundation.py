"""Frozen image encoders whose features eU-Net3+ fuses with its own (``foundation`` in its config overlay).

Any module that maps (B, 3, H, W) in [0, 1] to a feature map (B, C, h, w) and says its ``out_channels`` can be
plugged in; its weights come from a local file (nothing is downloaded) and it is never trained (its parameters
are frozen and it stays in evaluation mode). Two are provided:

- :class:`GRUNetEncoder`: the encoder and bottleneck of a trained GRU-Net (the bundle's own weights, so it is
  available offline). It is not a foundation model: it was trained on the same nuclei, so the fusion it enables
  measures the fusion mechanism, not knowledge from other data.
- :class:`SAMImageEncoder`: the image encoder of Segment Anything (ViT-B, the paper's choice), for users who have
  its weights (``sam_vit_b_01ec64.pth``) and the ``segment_anything`` package; the image is resized to 1024 pixels
  and normalised as SAM expects.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.errors import InputError
from bundle.training.checkpoints import load_state_dict

__all__ = ["FrozenEncoder", "GRUNetEncoder", "SAMImageEncoder"]
PathLike = Union[str, os.PathLike]


class FrozenEncoder(nn.Module):
    """Base of the frozen encoders: parameters without gradients, always in evaluation mode; subclasses set
    ``out_channels``, the channels of their feature map."""

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)


class GRUNetEncoder(FrozenEncoder):
    """The encoder and bottleneck of a trained GRU-Net, frozen.

    Args:
        network: the GRU-Net (:class:`bundle.networks.GRUNet`) the checkpoint was trained as.
        checkpoint: its weights (a state dict or ``{"model": ...}``); None keeps the network's own weights (tests).

    Shapes: (B, 3, H, W), H and W multiples of 16 -> (B, out_channels, H / 16, W / 16).

    Raises:
        InputError: the checkpoint is missing or is not one of ``network``.
    """

    def __init__(self, network: nn.Module, checkpoint: Optional[PathLike] = None):
        super().__init__()
        if checkpoint is not None:
            try:
                network.load_state_dict(load_state_dict(checkpoint))
            except RuntimeError as e:
                raise InputError(f"{checkpoint}: not a checkpoint of the foundation encoder's network ({str(e).splitlines()[0]})") from e
        self.network = network
        self.out_channels = int(network.bottleneck.out_channels)
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.encode(x)[1]


class SAMImageEncoder(FrozenEncoder):
    """Segment Anything's image encoder (ViT-B/L/H), frozen, on the image resized to ``image_size``.

    Args:
        checkpoint: the SAM weights file (e.g. ``sam_vit_b_01ec64.pth``).
        model_type: ``"vit_b"`` (the paper's), ``"vit_l"`` or ``"vit_h"``.
        image_size: SAM's input side (1024).

    Shapes: (B, 3, H, W) in [0, 1] -> (B, 256, image_size / 16, image_size / 16).

    Raises:
        InputError: ``segment_anything`` is not installed, or the weights file is missing.
    """

    def __init__(self, checkpoint: PathLike, model_type: str = "vit_b", image_size: int = 1024):
        super().__init__()
        try:
            from segment_anything import sam_model_registry
        except ImportError as e:
            raise InputError("SAMImageEncoder needs the segment_anything package (pip install segment-anything) and SAM weights") from e
        if not os.path.isfile(checkpoint):
            raise InputError(f"{checkpoint}: no such SAM weights file")
        self.encoder = sam_model_registry[model_type](checkpoint=str(checkpoint)).image_encoder
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255.0)
        self.register_buffer("std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255.0)
        self.out_channels = 256
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=[self.image_size, self.image_size], mode="bilinear", align_corners=False)
        return self.encoder((x - self.mean) / self.std)
