"""The bundle's networks: GRU-Net (the product) and the field's other designs as alternatives (``configs/networks``).

- :class:`GRUNet` (``grunet``, ``blocks``, ``text_prior``): MultiResUNet + CDRB skips + text-guided GdAM.
- :class:`UNetSharp` (``unet_sharp``): U-Net#, SE-ResNeXt encoder, ASPP bridge, full-scale skips with attention.
- :class:`EUNet3Plus` (``eunet3plus``, ``foundation``): UNet 3+ with GLUs, optionally fused with a frozen encoder.
- :class:`DARefineNet` (``da_refinenet``): DA-RefineNet, window and context encoders fused in Attn-Refine blocks.
- ``full_scale``: the UNet 3+ full-scale decoder U-Net# and eU-Net3+ share.
"""

from bundle.networks.blocks import CDRB, GdAM, MultiResBlock, ResPath, TextProjection
from bundle.networks.da_refinenet import DARefineNet
from bundle.networks.eunet3plus import EUNet3Plus
from bundle.networks.grunet import GRUNet, count_bn_statistics, count_parameters
from bundle.networks.unet_sharp import UNetSharp

__all__ = [
    "GRUNet", "UNetSharp", "EUNet3Plus", "DARefineNet", "MultiResBlock", "ResPath", "CDRB", "GdAM", "TextProjection",
    "count_parameters", "count_bn_statistics",
]
