"""DA-RefineNet (Li et al., "Dual-inputs Attention RefineNet for Whole Slide Image Segmentation"): two encoders, one
on the local window and one on a coarser view of the ``context_scale`` times larger field around it, fused by
attention in RefineNet blocks; with the bundle's distance head so that it gives instances.

The input is one tensor, the local window and its context view stacked on channels (B, 2 * in_channels, H, W), so
the network runs like any other in the inferers, runtimes and TorchScript; the context view is made by
:class:`bundle.pipeline.inferers.ContextWindowInferer` (inference: from the slide around each tile) and
:class:`bundle.data.transforms.RandContextCropd` (training). Both encoders are MONAI ``ResNet`` stages (basic
blocks, ``layers`` per stage: (1, 1, 1, 1) is ResNet-10, (2, 2, 2, 2) ResNet-18). RefineNet's residual conv units
(RCU), multi-resolution fusion and chained residual pooling (CRP) follow Lin et al.; the attention fusion aligns
the context features on the window (the centre ``1 / context_scale`` of the context map, resized) and weighs them
per pixel against the local ones, with a channel attention from the whole context.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.networks.encoders import RESNET_CHANNELS, resnet_encoder
from bundle.networks.full_scale import ConvNormAct

__all__ = ["ResidualConvUnit", "ChainedResidualPooling", "AttentionFusion", "AttnRefineBlock", "DARefineNet"]


class ResidualConvUnit(nn.Module):
    """RefineNet's RCU: ReLU, 3x3 conv, ReLU, 3x3 conv, plus the input; shape kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ChainedResidualPooling(nn.Module):
    """RefineNet's CRP: ReLU, then a chain of (5x5 max-pool stride 1, 3x3 conv) whose outputs are all added."""

    def __init__(self, channels: int, stages: int = 2):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(stages)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, kernel_size=[5, 5], stride=[1, 1], padding=[2, 2]))
            x = x + path
        return x


class AttentionFusion(nn.Module):
    """Fuse context features into local ones: the context map's centre (the window's own field) resized to the
    local map, weighed per pixel by a sigmoid attention of both, local features scaled by a channel attention of
    the whole context map.

    Args:
        local_channels: C of the local features (and of the output).
        context_channels: C of the context features.
        context_scale: how many times larger the context field is than the window.

    Shapes: ``forward(local, context)``: (B, C_l, h, w) and (B, C_c, h, w) -> (B, C_l, h, w).
    """

    def __init__(self, local_channels: int, context_channels: int, context_scale: int):
        super().__init__()
        self.context_scale = int(context_scale)
        self.project = nn.Conv2d(context_channels, local_channels, 1)
        self.spatial = nn.Sequential(nn.Conv2d(2 * local_channels, 1, 3, padding=1), nn.Sigmoid())
        hidden = max(4, local_channels // 4)
        self.channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(context_channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, local_channels, 1), nn.Sigmoid())

    def forward(self, local: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = context.shape[-2], context.shape[-1]
        ch, cw = max(1, h // self.context_scale), max(1, w // self.context_scale)
        top, left = (h - ch) // 2, (w - cw) // 2
        centre = context[:, :, top : top + ch, left : left + cw]
        aligned = self.project(F.interpolate(centre, size=local.shape[-2:], mode="bilinear", align_corners=False))
        weight = self.spatial(torch.cat([local, aligned], dim=1))
        return local * self.channel(context) + weight * aligned


class AttnRefineBlock(nn.Module):
    """DA-RefineNet's Attn-Refine block: attention fusion of the level's local and context features, two RCUs on
    it and on the previous (coarser) block's output, multi-resolution fusion (3x3 convs, upsampling, sum), CRP,
    one more RCU.

    Args:
        local_channels: C of the level's local features.
        context_channels: C of the level's context features.
        channels: the block's width.
        previous_channels: C of the coarser block's output (0: the first, coarsest block).
        context_scale: see :class:`AttentionFusion`.

    Shapes: ``forward(local, context, previous)`` -> (B, channels, h, w), the local map's size.
    """

    def __init__(self, local_channels: int, context_channels: int, channels: int, previous_channels: int, context_scale: int):
        super().__init__()
        self.fusion = AttentionFusion(local_channels, context_channels, context_scale)
        self.adapt = nn.Conv2d(local_channels, channels, 3, padding=1, bias=False)
        self.local_rcu = nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
        self.previous_rcu = nn.Sequential(ResidualConvUnit(previous_channels), ResidualConvUnit(previous_channels)) if previous_channels else None
        self.previous_adapt = nn.Conv2d(previous_channels, channels, 3, padding=1, bias=False) if previous_channels else None
        self.crp = ChainedResidualPooling(channels)
        self.out = ResidualConvUnit(channels)

    def forward(self, local: torch.Tensor, context: torch.Tensor, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.local_rcu(self.adapt(self.fusion(local, context)))
        if previous is not None and self.previous_rcu is not None and self.previous_adapt is not None:
            p = self.previous_adapt(self.previous_rcu(previous))
            x = x + F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.crp(x))


class DARefineNet(nn.Module):
    """DA-RefineNet: local and context ResNet encoders, four Attn-Refine blocks (1/32 .. 1/4), a full-resolution head.

    Args:
        in_channels: channels of one view (3: RGB); the input holds two views.
        out_channels: output channels: 2 for the bundle (nucleus logit, distance logit).
        layers: ResNet blocks per stage of the local encoder.
        context_layers: ResNet blocks per stage of the context encoder.
        channels: widths of the Attn-Refine blocks, coarsest first (RefineNet: 512, 256, 256, 256).
        context_scale: the context view covers ``context_scale`` times the window's side, at 1 / ``context_scale``
            of its resolution (the inferer and the training crop use the same value).

    Input (B, 2 * in_channels, H, W): the window, then its context view; H and W multiples of 32. Returns logits
    (B, out_channels, H, W).

    Raises:
        ValueError: in ``forward``, the wrong channel count or sides that are not multiples of 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        layers: Sequence[int] = (1, 1, 1, 1),
        context_layers: Sequence[int] = (1, 1, 1, 1),
        channels: Sequence[int] = (128, 64, 64, 64),
        context_scale: int = 4,
    ):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"DARefineNet needs 4 refine widths, got {list(channels)}")
        self.in_channels = in_channels
        self.input_channels = 2 * in_channels  # what the inferers and runtimes feed it
        self.context_scale = int(context_scale)
        self.divisor = 32
        self.local_encoder = resnet_encoder(in_channels, layers)
        self.context_encoder = resnet_encoder(in_channels, context_layers)
        widths = [0, *channels]
        self.refine = nn.ModuleList([  # levels 1/32, 1/16, 1/8, 1/4 (encoder indices 4, 3, 2, 1)
            AttnRefineBlock(RESNET_CHANNELS[4 - i], RESNET_CHANNELS[4 - i], widths[i + 1], widths[i], context_scale) for i in range(4)
        ])
        self.head = nn.Sequential(ConvNormAct(channels[-1] + in_channels, channels[-1], 3, "relu"), nn.Conv2d(channels[-1], out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"DARefineNet expects (B, {self.input_channels}, H, W): the window and its context view, got {list(x.shape)}")
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise ValueError(f"DARefineNet needs spatial sides that are multiples of {self.divisor}, got {x.shape[2]} x {x.shape[3]}")
        window, context = x[:, : self.in_channels], x[:, self.in_channels :]
        local = self.local_encoder(window)
        coarse = self.context_encoder(context)
        out: Optional[torch.Tensor] = None
        for i, block in enumerate(self.refine):
            out = block(local[4 - i], coarse[4 - i], out)
        assert out is not None
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([out, window], dim=1))
