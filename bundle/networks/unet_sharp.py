"""U-Net# (Stagys, "U-Net#: Nuclei Segmentation in Histopathology Images"): a ResNeXt encoder, an ASPP bridge, UNet
3+ full-scale skips with attention gates, Mish activations; with the bundle's distance head so that it gives
instances.

Built from MONAI blocks: the encoder is MONAI's ``SENet`` with ``SEResNeXtBottleneck`` (SE-ResNeXt: the paper's
SWSL ResNeXt101 32x4d has no squeeze-excitation and ImageNet/IG-1B weights that cannot be downloaded here, so the
encoder trains from scratch; ``layers`` sets its depth: (3, 4, 6, 3) is SE-ResNeXt50, (1, 1, 1, 1) the CPU-sized
default), the bridge MONAI's ``SimpleASPP``, the gates MONAI's ``AttentionBlock`` (in
:class:`bundle.networks.full_scale.FullScaleDecoder`). The paper's loss, Focal Tversky, is
:class:`bundle.training.losses.FocalTverskyLoss`; its Macenko normalisation is the bundle's ``stain_normalization``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import SimpleASPP

from bundle.networks.encoders import RESNEXT_CHANNELS, resnext_encoder
from bundle.networks.full_scale import ConvNormAct, FullScaleDecoder

__all__ = ["UNetSharp"]


class UNetSharp(nn.Module):
    """U-Net#: ResNeXt encoder -> ASPP bridge -> full-scale decoder with attention gates (Mish) -> heads.

    Args:
        in_channels: input channels.
        out_channels: output channels: 2 for the bundle (nucleus logit, distance logit).
        layers: ResNeXt blocks per stage (see :func:`bundle.networks.encoders.resnext_encoder`).
        groups: ResNeXt cardinality.
        aspp_channels: channels of each of the four ASPP branches (the bridge has four times as many).
        aspp_dilations: dilations of the three 3x3 ASPP branches (the paper's 6, 12, 18 are for 1/16 maps of large
            inputs; at 1/32 of a 256-pixel window the map is 8 x 8, so smaller rates are the default).
        cat_channels: channels of each input of a decoder level (UNet 3+: 64).
        attention: attention gates on the skips (the paper's design; False for the ablation).

    Input (B, in_channels, H, W), H and W multiples of 32. Returns logits (B, out_channels, H, W).

    Raises:
        ValueError: in ``forward``, sides that are not multiples of 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        layers: Sequence[int] = (1, 1, 1, 1),
        groups: int = 32,
        aspp_channels: int = 64,
        aspp_dilations: Sequence[int] = (2, 4, 6),
        cat_channels: int = 32,
        attention: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.divisor = 32
        self.encoder = resnext_encoder(in_channels, layers, groups)
        self.bridge = SimpleASPP(2, RESNEXT_CHANNELS[-1], aspp_channels, kernel_sizes=(1, 3, 3, 3),
                                 dilations=(1, *aspp_dilations), norm_type="BATCH", acti_type="MISH")
        channels = [*RESNEXT_CHANNELS[:-1], 4 * aspp_channels]
        self.decoder = FullScaleDecoder(channels, cat_channels, act="mish", attention=attention)
        self.refine = ConvNormAct(self.decoder.out_channels + in_channels, cat_channels, 3, "mish")  # full resolution
        self.head = nn.Conv2d(cat_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise ValueError(f"UNetSharp needs spatial sides that are multiples of {self.divisor}, got {x.shape[2]} x {x.shape[3]}")
        features = self.encoder(x)
        features[-1] = self.bridge(features[-1])
        u = self.decoder(features)
        u = F.interpolate(u, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.refine(torch.cat([u, x], dim=1)))
