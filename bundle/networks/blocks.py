"""Building blocks of GRU-Net: conv-BN, MultiRes block, ResPath, CDRB and GdAM.

Sizes and wiring follow the reference Keras code (see ``docs/README.md`` and the GRU-Net note): every
convolution inside a block is bias-free and followed by BatchNorm with Keras numerics (eps 1e-3,
momentum 0.99 in Keras terms, i.e. 0.01 in PyTorch terms).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "GATE_MODES",
    "SKIP_TYPES",
    "ConvBN",
    "ResidualUnit",
    "MultiResBlock",
    "ResPath",
    "CDRBUnit",
    "CDRB",
    "TextProjection",
    "GdAM",
    "DistanceHead",
    "multires_widths",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
GATE_MODES = ("sample", "batch", "pooled")
SKIP_TYPES = ("cdrb", "respath", "plain")


def multires_widths(units: int, alpha: float = 1.67) -> Tuple[int, int, int]:
    """Branch widths (a, b, c) of a MultiRes block, computed exactly as MultiResUNet does.

    Args:
        units: the block's nominal width U.
        alpha: width multiplier; W = alpha * U.

    Returns:
        ``(int(W * 0.167), int(W * 0.333), int(W * 0.5))``, e.g. (8, 17, 26) for U = 32.
    """
    width = alpha * units
    return int(width * 0.167), int(width * 0.333), int(width * 0.5)


class ConvBN(nn.Sequential):
    """Conv2d (bias-free, 'same' padding) -> BatchNorm2d -> optional ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size (1 or 3 in GRU-Net).
        act: append a ReLU when True.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, act: bool = True):
        super().__init__()
        self.add_module(
            "conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM))
        if act:
            self.add_module("act", nn.ReLU(inplace=True))


class MultiResBlock(nn.Module):
    """MultiRes block: a chain of three 3x3 conv-BN-ReLU (3x3, 5x5, 7x7 receptive fields), concatenated,
    plus a 1x1 shortcut: ``out = BN(ReLU(BN(cat[A, B, C]) + shortcut))``.

    Args:
        in_channels: input channels.
        units: nominal width U; output channels are a + b + c of :func:`multires_widths`.
        alpha: width multiplier (1.67 in MultiResUNet).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W), ``out_channels`` set as an attribute
    (51, 105, 212, 426, 853 for U = 32 ... 512).
    """

    def __init__(self, in_channels: int, units: int, alpha: float = 1.67):
        super().__init__()
        a, b, c = multires_widths(units, alpha)
        if min(a, b, c) <= 0:
            raise ValueError(f"units * alpha too small for a MultiRes block: units={units}, alpha={alpha}")
        self.out_channels = a + b + c
        self.shortcut = ConvBN(in_channels, self.out_channels, 1, act=False)
        self.conv3 = ConvBN(in_channels, a, 3)
        self.conv5 = ConvBN(a, b, 3)
        self.conv7 = ConvBN(b, c, 3)
        self.bn_cat = nn.BatchNorm2d(self.out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.bn_out = nn.BatchNorm2d(self.out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        out = self.bn_cat(torch.cat([a, b, c], dim=1))
        return self.bn_out(F.relu(out + self.shortcut(x)))


class ResidualUnit(nn.Module):
    """Residual unit ``BN(ReLU(convbn3x3(x) + convbn1x1(x)))`` shared by ResPath and the CDRB.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        conv_act: ReLU inside the 3x3 branch (ResPath) or not (CDRB).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, conv_act: bool):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, 3, act=conv_act)
        self.shortcut = ConvBN(in_channels, out_channels, 1, act=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x) + self.shortcut(x)))


class ResPathUnit(ResidualUnit):
    """One unit of MultiResUNet's ResPath: ``BN(ReLU(convbn3x3_relu(x) + convbn1x1(x)))``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, conv_act=True)


class ResPath(nn.Sequential):
    """MultiResUNet's skip path: ``length`` chained :class:`ResPathUnit` (lengths 4/3/2/1 from level 1 to 4).

    Args:
        in_channels: channels of the encoder MultiRes block output.
        out_channels: path width (U of the level).
        length: number of units, >= 1.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, length: int):
        super().__init__()
        if length < 1:
            raise ValueError(f"ResPath length must be >= 1, got {length}")
        for i in range(length):
            self.add_module(f"unit{i}", ResPathUnit(in_channels if i == 0 else out_channels, out_channels))


class CDRBUnit(ResidualUnit):
    """Unit of the CDRB: ``BN(ReLU(convbn3x3(z) + convbn1x1(z)))`` (no activation inside the branches)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, conv_act=False)


class CDRB(nn.Module):
    """Controlled Dense Residual Block: densely connected :class:`CDRBUnit` scaled by a learned control gate.

    Dense wiring with ``repeat_channels=True`` (reference): ``x_1 = x``, ``x_{k+1} = cat[y_k, x_1, ..., x_k]``,
    so earlier inputs reappear (level 4 unit inputs 426/682/1364/2728 channels). With ``repeat_channels=False``
    (default): ``x_{k+1} = cat[y_k, ..., y_1, x]`` (DenseNet wiring, same function class, less compute).
    The output is ``y_n * lambda`` with ``lambda = sigmoid(conv1x1(x))`` computed from the block input.

    Args:
        in_channels: C, channels of the encoder MultiRes block output.
        out_channels: F, channels of each unit and of the output.
        num_units: number of dense units (4 in the reference).
        gate: how lambda is formed: ``"sample"`` a per-pixel map per image (default, corrected);
            ``"batch"`` the per-pixel map averaged over the batch axis (reference behaviour: an image's
            output depends on the rest of its batch); ``"pooled"`` one scalar per image from the globally
            max-pooled input.
        repeat_channels: reproduce the reference's repeated channels in the dense concatenation.

    Shapes: (B, C, H, W) -> (B, F, H, W).

    Raises:
        ValueError: unknown ``gate`` or ``num_units < 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_units: int = 4,
        gate: str = "sample",
        repeat_channels: bool = False,
    ):
        super().__init__()
        if gate not in GATE_MODES:
            raise ValueError(f"gate must be one of {GATE_MODES}, got {gate!r}")
        if num_units < 1:
            raise ValueError(f"num_units must be >= 1, got {num_units}")
        self.gate = gate
        self.repeat_channels = repeat_channels
        widths: List[int] = []
        if repeat_channels:
            inputs = [in_channels]  # channels of x_1 .. x_k
            for _ in range(num_units):
                widths.append(inputs[-1])
                inputs.append(out_channels + sum(inputs))
        else:
            widths = [in_channels + k * out_channels for k in range(num_units)]
        self.units = nn.ModuleList([CDRBUnit(w, out_channels) for w in widths])
        self.control = nn.Conv2d(in_channels, 1, kernel_size=1, bias=True)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate == "pooled":
            return torch.sigmoid(self.control(torch.amax(x, dim=(2, 3), keepdim=True)))
        lam = torch.sigmoid(self.control(x))
        if self.gate == "batch":
            lam = lam.mean(dim=0, keepdim=True)
        return lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_channels:
            seen: List[torch.Tensor] = [x]  # x_1 .. x_k
            y = x
            last = len(self.units) - 1
            for k, unit in enumerate(self.units):
                y = unit(seen[k])
                if k < last:
                    seen.append(torch.cat([y] + seen, dim=1))
        else:
            feats: List[torch.Tensor] = [x]  # newest first after the loop body
            y = x
            for unit in self.units:
                y = unit(torch.cat(feats, dim=1))
                feats.insert(0, y)
        return y * self._gate(x)


class TextProjection(nn.Module):
    """Project a (P, D) prompt-embedding matrix to a (1, 1, S, S) text map:
    ``ReLU(Linear(D->S))`` on the prompts, transpose, ``ReLU(Linear(P->S))``.

    Args:
        text_dim: D, embedding size of the text encoder (768 for DistilBERT, 384 for MiniLM).
        n_prompts: P, number of prompts.
        map_size: S, side of the text map (32 in the reference).
        trainable: learn the projections (default, corrected). When False the reference's frozen random
            (Glorot-uniform, zero-bias) projections are kept as buffers: saved, never trained.

    Shapes: (P, D) -> (1, 1, S, S), or per image (B, P, D) -> (B, 1, S, S).
    """

    def __init__(self, text_dim: int, n_prompts: int, map_size: int = 32, trainable: bool = True):
        super().__init__()
        self.trainable = trainable
        w1 = nn.init.xavier_uniform_(torch.empty(map_size, text_dim))
        w2 = nn.init.xavier_uniform_(torch.empty(map_size, n_prompts))
        if trainable:
            self.w_text = nn.Parameter(w1)
            self.b_text = nn.Parameter(torch.zeros(map_size))
            self.w_prompt = nn.Parameter(w2)
            self.b_prompt = nn.Parameter(torch.zeros(map_size))
        else:
            self.register_buffer("w_text", w1)
            self.register_buffer("b_text", torch.zeros(map_size))
            self.register_buffer("w_prompt", w2)
            self.register_buffer("b_prompt", torch.zeros(map_size))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        t = F.relu(F.linear(prompts, self.w_text, self.b_text))  # ([B,] P, S)
        t = F.relu(F.linear(t.transpose(-1, -2), self.w_prompt, self.b_prompt))  # ([B,] S, S)
        return t.unsqueeze(-3) if t.dim() == 3 else t.unsqueeze(0).unsqueeze(0)


class SeparableHead(nn.Module):
    """Depthwise 1x1 (no bias) then pointwise 1x1 to one channel (with bias): the mu / sigma heads of GdAM.

    Shapes: (B, C, H, W) -> (B, 1, H, W).
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


SIGMA_FLOOR = 1e-6  # added to GdAM's sampling variance: a finite gradient where the variance reaches 0
IDENTITY_START_SD = 0.01  # softplus of GdAM's sd head at an identity start


class GdAM(nn.Module):
    """Gaussian distribution-based Attention Module: text-guided spatial attention for each decoder level.

    From the bottleneck, ``num_scales`` chained ``ReLU(ConvTranspose2d(2x2, stride 2))`` give image features
    x_i at the decoder resolutions (H/8 ... H/1 for four scales); the text map goes through its own chain of
    1-channel transposed convolutions to t_i. For each scale
    ``mu_i = softplus(mu_head(x_i)) + mean(t_i)`` and
    ``sigma_i = sqrt(softplus(sd_head(x_i))^2 + var(t_i) + SIGMA_FLOOR)`` (heads shared across scales, population
    variance). The attention is mu_i at evaluation; in training (or when ``sample`` is asked) it is a
    reparameterised sample ``mu_i + sigma_i * eps``. Training drives the sd head towards zero (the shipped model's
    softplus reaches 3e-44 at the last scale) and the text variance is small (1e-7 .. 4e-4), so without the floor
    the square root meets 0 (in bfloat16 first) and its gradient is infinite: a full-size bf16 training run on CPU
    turned every weight to NaN after 66 iterations. The floor (1e-6, sigma >= 0.001) keeps the gradient finite and
    changes nothing at evaluation.

    The reference initialises the heads like every other convolution (Glorot-uniform, zero bias): both softplus
    terms then start near 0.7, so in training every decoder level is multiplied by a per-pixel sample of mean about
    0.7 and standard deviation about 0.7, negative at one pixel in six, and training must first learn to silence
    the noise. :meth:`start_as_identity` instead zeroes the heads' pointwise weights and sets their biases so that
    the mean head gives 1 and the sd head ``IDENTITY_START_SD``: the attention starts as 1 + mean(t_i) with small
    noise and learns from there.

    Args:
        in_channels: bottleneck channels (853 in the reference).
        features: channels of the image branch (256 in the reference).
        num_scales: number of decoder levels to attend (4).
        identity_start: start the heads as :meth:`start_as_identity` does (default); False keeps the reference's
            Glorot heads.

    Shapes: bottleneck (B, in_channels, h, w) and text map (1, 1, S, S) (one text for all) or (B, 1, S, S)
    (a text per image; mean and variance are then taken per image) ->
    list of ``num_scales`` maps (B, 1, h * 2**i, w * 2**i), i = 1 .. num_scales.
    """

    def __init__(self, in_channels: int, features: int = 256, num_scales: int = 4, identity_start: bool = True):
        super().__init__()
        self.image_up = nn.ModuleList(
            [nn.ConvTranspose2d(in_channels if i == 0 else features, features, 2, stride=2) for i in range(num_scales)]
        )
        self.text_up = nn.ModuleList([nn.ConvTranspose2d(1, 1, 2, stride=2) for _ in range(num_scales)])
        self.mu_head = SeparableHead(features)
        self.sd_head = SeparableHead(features)
        self.sigma_floor = SIGMA_FLOOR  # an attribute: TorchScript does not read module-level floats
        self.identity_start = identity_start
        if identity_start:
            self.start_as_identity()

    @torch.jit.unused
    def start_as_identity(self) -> None:
        """Zero the heads' pointwise weights; biases so that softplus gives 1 (mean) and ``IDENTITY_START_SD`` (sd).

        Called again by a network that re-initialises its convolutions after building this module.
        """
        with torch.no_grad():
            for head, value in ((self.mu_head, 1.0), (self.sd_head, IDENTITY_START_SD)):
                head.pointwise.weight.zero_()
                head.pointwise.bias.fill_(math.log(math.expm1(value)))  # the inverse of softplus

    def forward(self, bottleneck: torch.Tensor, text_map: torch.Tensor, sample: bool) -> List[torch.Tensor]:
        maps: List[torch.Tensor] = []
        x = bottleneck
        t = text_map
        for image_up, text_up in zip(self.image_up, self.text_up):
            x = F.relu(image_up(x))
            t = F.relu(text_up(t))
            mu = F.softplus(self.mu_head(x)) + t.mean(dim=(1, 2, 3), keepdim=True)
            if sample:
                variance = F.softplus(self.sd_head(x)) ** 2 + t.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
                sigma = torch.sqrt(variance + self.sigma_floor)
                maps.append(mu + sigma * torch.randn_like(mu))
            else:
                maps.append(mu)
        return maps


class DistanceHead(nn.Sequential):
    """Nucleus distance head: a 1x1 conv-BN-ReLU to ``features`` channels, 3x3 conv-BN-ReLU layers of growing
    dilation, then a 1x1 convolution (with bias) to one channel.

    Its sigmoid is each pixel's distance to the border of its nucleus, normalised to [0, 1] within every nucleus
    (1 at the centre, small on the border, 0 on the background); the watershed takes its high regions as nucleus
    markers. The dilations (1, 2, 4, 8) give a 31-pixel receptive field, about one nucleus at 40x, so that every
    pixel sees the borders it is measured to.

    Args:
        in_channels: channels of the last decoder level.
        features: channels of the hidden layers. Default 16.
        dilations: dilation of each 3x3 convolution. Default (1, 2, 4, 8).

    Shapes: (B, in_channels, H, W) -> (B, 1, H, W) logits.
    """

    def __init__(self, in_channels: int, features: int = 16, dilations: Sequence[int] = (1, 2, 4, 8)):
        super().__init__()
        self.add_module("reduce", ConvBN(in_channels, features, kernel_size=1))
        for i, dilation in enumerate(dilations, start=1):
            conv = nn.Conv2d(features, features, 3, padding=dilation, dilation=dilation, bias=False)
            bn = nn.BatchNorm2d(features, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.add_module(f"conv{i}", nn.Sequential(conv, bn, nn.ReLU(inplace=True)))
        self.add_module("out", nn.Conv2d(features, 1, kernel_size=1))
