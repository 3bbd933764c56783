"""GRU-Net networks and their building blocks."""

from bundle.networks.blocks import CDRB, GdAM, MultiResBlock, ResPath, TextProjection
from bundle.networks.grunet import GRUNet, count_bn_statistics, count_parameters

__all__ = ["GRUNet", "MultiResBlock", "ResPath", "CDRB", "GdAM", "TextProjection", "count_parameters", "count_bn_statistics"]
