"""UNet 3+ full-scale skip connections (Huang et al. 2020): the decoder shared by U-Net# and eU-Net3+.

Each decoder level sees every encoder level at or above its resolution (max-pooled down to it) and every deeper
decoder level (bilinearly upsampled to it), each reduced to ``cat_channels`` by a 3x3 conv-BN-activation, then
fused by one more 3x3 conv-BN-activation over their concatenation (``levels x cat_channels`` channels). U-Net#
gates the same-resolution encoder skip with an attention gate driven by the next deeper decoder level (MONAI's
``AttentionBlock``). Activations are named: ``"relu"``, ``"mish"`` (U-Net#) or ``"glu"`` (eU-Net3+, the conv then
gives twice the channels and the gated linear unit halves them: ``a * sigmoid(b)``).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.attentionunet import AttentionBlock

__all__ = ["ACTIVATIONS", "ConvNormAct", "FullScaleLevel", "FullScaleDecoder"]
ACTIVATIONS = ("relu", "mish", "glu")


class ConvNormAct(nn.Module):
    """Conv2d ('same' padding, bias-free) -> BatchNorm2d -> activation; shapes (B, C_in, H, W) -> (B, C_out, H, W).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        act: ``"relu"``, ``"mish"`` or ``"glu"`` (the conv makes ``2 * out_channels``; GLU over channels).
        dilation: dilation of the convolution.

    Raises:
        ValueError: an unknown activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, act: str = "relu", dilation: int = 1):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        width = 2 * out_channels if act == "glu" else out_channels
        self.conv = nn.Conv2d(in_channels, width, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False)
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.GLU(dim=1) if act == "glu" else nn.Mish() if act == "mish" else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class FullScaleLevel(nn.Module):
    """One decoder level ``d`` of a full-scale decoder over ``levels`` levels.

    Args:
        level: d, 0 = the highest resolution.
        encoder_channels: channels of every encoder level, shallowest first (the last is the bottleneck).
        cat_channels: channels of each of the ``levels`` inputs.
        act: activation (see :data:`ACTIVATIONS`).
        attention: gate the same-resolution encoder skip with the next deeper decoder level.

    Shapes: ``forward(features, decoded)``: features[i] (B, encoder_channels[i], H / 2**i, W / 2**i); decoded[j] for
    j > d the deeper decoder levels (decoded[levels - 1] is the bottleneck). Returns (B, levels * cat_channels,
    H / 2**d, W / 2**d).
    """

    def __init__(self, level: int, encoder_channels: Sequence[int], cat_channels: int, act: str, attention: bool):
        super().__init__()
        levels = len(encoder_channels)
        self.level = level
        self.out_channels = levels * cat_channels
        self.pool_sizes: List[int] = [2 ** (level - j) if j < level else 1 for j in range(levels)]
        widths = [encoder_channels[j] if j <= level or j == levels - 1 else self.out_channels for j in range(levels)]
        self.branches = nn.ModuleList([ConvNormAct(c, cat_channels, 3, act) for c in widths])
        self.fuse = ConvNormAct(self.out_channels, self.out_channels, 3, act)
        self.gate = AttentionBlock(2, max(1, encoder_channels[level] // 2), widths[level + 1], encoder_channels[level]) if attention else None

    def forward(self, features: List[torch.Tensor], decoded: List[torch.Tensor]) -> torch.Tensor:
        d = self.level
        size = features[d].shape[-2:]
        parts: List[torch.Tensor] = []
        for j, branch in enumerate(self.branches):
            if j < d:
                k = self.pool_sizes[j]
                x = F.max_pool2d(features[j], kernel_size=[k, k], stride=[k, k])
            elif j == d:
                x = features[d]
                if self.gate is not None:
                    x = self.gate(F.interpolate(decoded[d + 1], size=size, mode="bilinear", align_corners=False), x)
            else:
                x = F.interpolate(decoded[j], size=size, mode="bilinear", align_corners=False)
            parts.append(branch(x))
        return self.fuse(torch.cat(parts, dim=1))


class FullScaleDecoder(nn.Module):
    """The UNet 3+ decoder over an encoder of ``len(encoder_channels)`` levels, each half the previous resolution.

    Args:
        encoder_channels: channels of the encoder levels, shallowest (highest resolution) first; the last is the
            bottleneck.
        cat_channels: channels of each of the ``levels`` inputs of a decoder level.
        act: activation (see :data:`ACTIVATIONS`).
        attention: gate the same-resolution encoder skip of each decoder level with an attention gate (U-Net#).

    Shapes: ``forward(features)`` with features[i] (B, encoder_channels[i], H / 2**i, W / 2**i) returns the
    shallowest decoder level, (B, out_channels, H, W), ``out_channels = levels * cat_channels``.

    Raises:
        ValueError: fewer than 2 levels.
    """

    def __init__(self, encoder_channels: Sequence[int], cat_channels: int = 64, act: str = "relu", attention: bool = False):
        super().__init__()
        levels = len(encoder_channels)
        if levels < 2:
            raise ValueError(f"a full-scale decoder needs at least 2 encoder levels, got {levels}")
        self.out_channels = levels * cat_channels
        self.decoder = nn.ModuleList(  # deepest first, as it runs
            [FullScaleLevel(d, encoder_channels, cat_channels, act, attention) for d in range(levels - 2, -1, -1)]
        )

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        decoded: List[torch.Tensor] = []
        for _ in range(len(features)):
            decoded.append(features[-1])  # filled deepest first; decoded[-1] stays the bottleneck
        out = features[-1]
        for stage in self.decoder:
            out = stage(features, decoded)
            decoded[stage.level] = out
        return out
