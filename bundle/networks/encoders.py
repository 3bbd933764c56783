"""Backbone encoders as five feature levels (1/2 .. 1/32 of the input), from MONAI's ResNet and SE-ResNeXt.

U-Net# uses the SE-ResNeXt (:func:`resnext_encoder`), DA-RefineNet two basic-block ResNets (:func:`resnet_encoder`);
both are a :class:`StagedEncoder`: a stride-2 stem, a max-pool, four stages.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.squeeze_and_excitation import SEResNeXtBottleneck
from monai.networks.nets import ResNet, SENet

__all__ = ["StagedEncoder", "resnext_encoder", "resnet_encoder", "RESNEXT_CHANNELS", "RESNET_CHANNELS"]
RESNEXT_CHANNELS = (64, 256, 512, 1024, 2048)  # SE-ResNeXt levels at 1/2 .. 1/32
RESNET_CHANNELS = (64, 64, 128, 256, 512)  # basic-block ResNet levels at 1/2 .. 1/32


class StagedEncoder(nn.Module):
    """stem (1/2) -> pool -> four stages (1/4 .. 1/32); returns the five levels.

    Args:
        stem: the stride-2 input block.
        pool: the pooling after it.
        stages: the four stages.
        channels: channels of the five levels.

    Shapes: (B, C, H, W), H and W multiples of 32 -> [(B, channels[i], H / 2**(i+1), W / 2**(i+1)) for i in 0..4].
    """

    def __init__(self, stem: nn.Module, pool: nn.Module, stages: Sequence[nn.Module], channels: Sequence[int]):
        super().__init__()
        self.stem, self.pool = stem, pool
        self.stages = nn.ModuleList(stages)
        self.channels: List[int] = list(channels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = [self.stem(x)]
        h = self.pool(features[0])
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return features


def resnext_encoder(in_channels: int = 3, layers: Sequence[int] = (1, 1, 1, 1), groups: int = 32, reduction: int = 16) -> StagedEncoder:
    """MONAI's SE-ResNeXt (``SENet`` with ``SEResNeXtBottleneck``; (3, 4, 6, 3) blocks is SE-ResNeXt50) as levels of
    :data:`RESNEXT_CHANNELS`."""
    senet = SENet(2, in_channels, SEResNeXtBottleneck, list(layers), groups=groups, reduction=reduction, dropout_prob=None,
                  inplanes=64, downsample_kernel_size=1, input_3x3=False)
    stem = nn.Sequential(senet.layer0.conv1, senet.layer0.bn1, senet.layer0.relu1)
    return StagedEncoder(stem, senet.layer0.pool, [senet.layer1, senet.layer2, senet.layer3, senet.layer4], RESNEXT_CHANNELS)


def resnet_encoder(in_channels: int = 3, layers: Sequence[int] = (1, 1, 1, 1)) -> StagedEncoder:
    """MONAI's basic-block ``ResNet`` ((1, 1, 1, 1) is ResNet-10, (2, 2, 2, 2) ResNet-18) as levels of
    :data:`RESNET_CHANNELS`."""
    resnet = ResNet("basic", list(layers), [64, 128, 256, 512], spatial_dims=2, n_input_channels=in_channels,
                    conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", feed_forward=False)
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act)
    return StagedEncoder(stem, resnet.maxpool, [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4], RESNET_CHANNELS)
