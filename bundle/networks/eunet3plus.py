"""eU-Net3+ (U-Net3+ fused with SAM ViT-B features for nuclei segmentation): UNet 3+ with gated linear units
(adaptive feature selection) and, with a frozen foundation encoder, the Enhanced Fusion Block that fuses the
encoder's features with the local ones; with the bundle's distance head so that it gives instances.

The Enhanced Fusion Block (EFB) works at the bottleneck: the foundation features, resized to it, are concatenated
with the local ones; a gated squeeze-and-excitation (global average pool, 1x1 conv, GLU, 1x1 conv, sigmoid)
reweights the channels; a GLU block (1x1 conv, BN, GLU) brings them to the local width; cross-attention (PyTorch's
``nn.MultiheadAttention``, the local features as queries, the fused ones as keys and values) adds what the
fusion contributes, residually. The foundation encoder is pluggable (:mod:`bundle.networks.foundation`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.networks.foundation import FrozenEncoder
from bundle.networks.full_scale import ConvNormAct, FullScaleDecoder

__all__ = ["GLUEncoderLevel", "EnhancedFusionBlock", "EUNet3Plus"]


class GLUEncoderLevel(nn.Sequential):
    """Two 3x3 conv-BN-GLU layers; (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvNormAct(in_channels, out_channels, 3, "glu"), ConvNormAct(out_channels, out_channels, 3, "glu"))


class EnhancedFusionBlock(nn.Module):
    """Fuse global (foundation) features into local ones: gated squeeze-excitation, GLU block, cross-attention.

    Args:
        local_channels: C_l of the local features.
        global_channels: C_g of the foundation features.
        heads: attention heads (``local_channels`` must be a multiple).
        reduction: squeeze-excitation reduction.

    Shapes: ``forward(local, global_)``: (B, C_l, h, w) and (B, C_g, h', w') -> (B, C_l, h, w).
    """

    def __init__(self, local_channels: int, global_channels: int, heads: int = 4, reduction: int = 4):
        super().__init__()
        channels = local_channels + global_channels
        hidden = max(1, channels // reduction)
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 2 * hidden, 1), nn.GLU(dim=1), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )
        self.gate = ConvNormAct(channels, local_channels, 1, "glu")
        self.attention = nn.MultiheadAttention(local_channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(local_channels)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        b, c, h, w = local.shape
        global_ = F.interpolate(global_, size=[h, w], mode="bilinear", align_corners=False)
        fused = torch.cat([local, global_.to(local.dtype)], dim=1)
        fused = self.gate(fused * self.excite(fused))
        queries = local.flatten(2).transpose(1, 2)  # (B, h*w, C_l)
        context = fused.flatten(2).transpose(1, 2)
        attended, _ = self.attention(self.norm(queries), context, context, need_weights=False)
        return local + attended.transpose(1, 2).reshape(b, c, h, w)


class EUNet3Plus(nn.Module):
    """eU-Net3+: a five-level GLU encoder, a full-scale GLU decoder, and optionally the EFB at the bottleneck.

    Args:
        in_channels: input channels.
        out_channels: output channels: 2 for the bundle (nucleus logit, distance logit).
        features: channels of the five encoder levels (UNet 3+: 64, 128, 256, 512, 1024).
        cat_channels: channels of each input of a decoder level (UNet 3+: 64).
        foundation: a frozen encoder (:class:`bundle.networks.foundation.FrozenEncoder`); None: eU-Net3+ without
            fusion.
        heads: attention heads of the fusion block.

    Input (B, in_channels, H, W), H and W multiples of 16. Returns logits (B, out_channels, H, W).

    Raises:
        ValueError: not five ``features``; in ``forward``, sides that are not multiples of 16.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        cat_channels: int = 16,
        foundation: Optional[FrozenEncoder] = None,
        heads: int = 4,
    ):
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"EUNet3Plus needs 5 encoder widths, got {list(features)}")
        self.divisor = 16
        widths = [in_channels, *features]
        self.encoder = nn.ModuleList([GLUEncoderLevel(widths[i], widths[i + 1]) for i in range(5)])
        self.foundation = foundation
        self.fusion = EnhancedFusionBlock(features[-1], foundation.out_channels, heads) if foundation is not None else None
        self.decoder = FullScaleDecoder(list(features), cat_channels, act="glu")
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise ValueError(f"EUNet3Plus needs spatial sides that are multiples of {self.divisor}, got {x.shape[2]} x {x.shape[3]}")
        features: List[torch.Tensor] = []
        h = x
        for i, level in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, kernel_size=[2, 2], stride=[2, 2])
            h = level(h)
            features.append(h)
        if self.foundation is not None and self.fusion is not None:
            with torch.no_grad():
                global_ = self.foundation(x)
            features[-1] = self.fusion(features[-1], global_)
        return self.head(self.decoder(features))
