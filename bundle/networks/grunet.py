"""GRU-Net: MultiResUNet with CDRB skip connections and text-guided Gaussian attention (GdAM).

Reference-faithful (``reference=True``) or corrected (default). See ``docs/README.md`` for the design notes.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from bundle.networks.blocks import (
    BN_MOMENTUM,
    CDRB,
    GATE_MODES,
    SKIP_TYPES,
    DistanceHead,
    GdAM,
    MultiResBlock,
    ResPath,
    TextProjection,
)

__all__ = ["GRUNet", "EncoderStage", "DecoderStage", "count_parameters", "count_bn_statistics"]

NUM_LEVELS = 4  # pooling steps; input sides must be multiples of 2**NUM_LEVELS
RESPATH_LENGTHS = (4, 3, 2, 1)


class EncoderStage(nn.Sequential):
    """Max-pool by 2, then a :class:`MultiResBlock`.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / 2, W / 2).
    """

    def __init__(self, in_channels: int, units: int, alpha: float):
        super().__init__()
        self.add_module("pool", nn.MaxPool2d(2))
        self.add_module("block", MultiResBlock(in_channels, units, alpha))
        self.out_channels = self.block.out_channels


class DecoderStage(nn.Module):
    """ConvTranspose2d (2x2, stride 2, with bias) to ``units`` channels, concatenation with the skip, MultiRes block.

    Shapes: (B, in_channels, h, w) and skip (B, skip_channels, 2h, 2w) -> (B, out_channels, 2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, units: int, alpha: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, units, kernel_size=2, stride=2)
        self.block = MultiResBlock(units + skip_channels, units, alpha)
        self.out_channels = self.block.out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


def _make_skip(skip: str, in_channels: int, units: int, level: int, cdrb_units: int, gate: str, repeat: bool) -> nn.Module:
    if skip == "cdrb":
        return CDRB(in_channels, units, num_units=cdrb_units, gate=gate, repeat_channels=repeat)
    if skip == "respath":
        return ResPath(in_channels, units, RESPATH_LENGTHS[level])
    return nn.Identity()


class GRUNet(nn.Module):
    """GRU-Net for 2D nucleus segmentation: a MultiResUNet encoder-decoder whose four skip connections are
    Controlled Dense Residual Blocks (CDRB) and whose decoder levels are scaled by text-guided Gaussian
    attention maps (GdAM).

    Args:
        in_channels: input channels (3 for RGB H&E).
        out_channels: output logit channels (1 for nucleus vs background).
        features: U of the first level; the levels use features * (1, 2, 4, 8, 16). Default 32.
        alpha: MultiRes width multiplier. Default 1.67.
        skip: skip connection type: ``"cdrb"`` (GRU-Net), ``"respath"`` (MultiResUNet) or ``"plain"`` (identity).
        gdam: use the GdAM attention. Default True.
        gate: CDRB control gate: ``"sample"`` (per-image map, default), ``"batch"`` (batch-mean map, as in the
            reference) or ``"pooled"`` (one scalar per image).
        repeat_channels: CDRB dense concatenation repeats earlier inputs as in the reference. Default False.
        cdrb_units: CDRB units per level. Default 4.
        dropout: channel dropout probability after each decoder level (used by MONAI Label for epistemic
            uncertainty). Default 0.
        distance_head: add a :class:`DistanceHead` on the last decoder level; its logit is appended as the last
            output channel (sigmoid: each nucleus pixel's normalised distance to its border, for instance
            separation). Default False.
        text_prior: (P, D) prompt embeddings (see :mod:`bundle.networks.text_prior`), kept as a buffer so inference needs no
            text encoder. When None, a zero buffer of shape (n_prompts, text_dim) is made; a checkpoint fills it.
        n_prompts: P when ``text_prior`` is None. Default 16.
        text_dim: D when ``text_prior`` is None. Default 384 (all-MiniLM-L6-v2).
        gdam_features: channels of the GdAM image branch. Default 8 * features (256).
        text_map_size: side of the projected text map. Default 32.
        trainable_text_projection: learn the text projection (default) or keep it frozen random (reference).
        gdam_identity_start: start GdAM's attention as 1 with little noise (default; see
            :meth:`GdAM.start_as_identity`) instead of the reference's Glorot heads, whose training samples start at
            mean 0.7 and standard deviation 0.7.
        bn_momentum: BatchNorm running-statistics momentum (PyTorch convention). Default 0.1. The reference's
            Keras value, 0.01, leaves the running statistics far from the batch statistics after a few hundred
            iterations, so evaluation-mode predictions collapse on small datasets.
        reference: reproduce the reference structure exactly; overrides ``gate="batch"``,
            ``repeat_channels=True``, ``cdrb_units=4``, ``trainable_text_projection=False``, ``bn_momentum=0.01``,
            ``gdam_identity_start=False``.

    Input (B, in_channels, H, W) with H and W multiples of 16. Returns logits (B, out_channels, H, W), or
    (B, out_channels + 1, H, W) with ``distance_head``.
    GdAM uses its mean map at evaluation; it samples in training or after ``set_attention_sampling(True)``.

    Raises:
        ValueError: unknown ``skip`` or ``gate``, non-positive sizes, a ``text_prior`` that is not 2-D;
            in ``forward``, an input with the wrong channel count or spatial sides not multiples of 16.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        features: int = 32,
        alpha: float = 1.67,
        skip: str = "cdrb",
        gdam: bool = True,
        gate: str = "sample",
        repeat_channels: bool = False,
        cdrb_units: int = 4,
        dropout: float = 0.0,
        distance_head: bool = False,
        text_prior: Optional[torch.Tensor] = None,
        n_prompts: int = 16,
        text_dim: int = 384,
        gdam_features: Optional[int] = None,
        text_map_size: int = 32,
        trainable_text_projection: bool = True,
        gdam_identity_start: bool = True,
        bn_momentum: float = 0.1,
        reference: bool = False,
    ):
        super().__init__()
        if reference:
            gate, repeat_channels, cdrb_units, trainable_text_projection = "batch", True, 4, False
            bn_momentum, gdam_identity_start = BN_MOMENTUM, False
        if skip not in SKIP_TYPES:
            raise ValueError(f"skip must be one of {SKIP_TYPES}, got {skip!r}")
        if gate not in GATE_MODES:
            raise ValueError(f"gate must be one of {GATE_MODES}, got {gate!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("features", features)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.divisor = 2**NUM_LEVELS
        self.sample_attention = False

        units = [features * 2**i for i in range(NUM_LEVELS + 1)]
        self.stem = MultiResBlock(in_channels, units[0], alpha)
        encoder: List[nn.Module] = []
        enc_channels = [self.stem.out_channels]
        for u in units[1:]:
            stage = EncoderStage(enc_channels[-1], u, alpha)
            encoder.append(stage)
            enc_channels.append(stage.out_channels)
        self.encoder = nn.ModuleList(encoder[:-1])
        self.bottleneck = encoder[-1]

        self.skips = nn.ModuleList(
            [
                _make_skip(skip, enc_channels[i], units[i], i, cdrb_units, gate, repeat_channels)
                for i in range(NUM_LEVELS)
            ]
        )
        skip_channels = [enc_channels[i] if skip == "plain" else units[i] for i in range(NUM_LEVELS)]

        decoder: List[nn.Module] = []
        channels = enc_channels[-1]
        for i in reversed(range(NUM_LEVELS)):  # deepest first
            stage = DecoderStage(channels, skip_channels[i], units[i], alpha)
            decoder.append(stage)
            channels = stage.out_channels
        self.decoder = nn.ModuleList(decoder)
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1)
        self.distance = DistanceHead(channels) if distance_head else None

        self.text_projection: Optional[TextProjection] = None
        self.gdam: Optional[GdAM] = None
        if gdam:
            if text_prior is None:
                text_prior = torch.zeros(n_prompts, text_dim)
            if text_prior.dim() != 2:
                raise ValueError(f"text_prior must be (n_prompts, dim), got shape {tuple(text_prior.shape)}")
            self.register_buffer("text_prior", text_prior.detach().clone().float())
            self.text_projection = TextProjection(
                text_prior.shape[1], text_prior.shape[0], text_map_size, trainable=trainable_text_projection
            )
            self.gdam = GdAM(enc_channels[-1], gdam_features or 8 * features, NUM_LEVELS, gdam_identity_start)
        else:
            self.register_buffer("text_prior", torch.zeros(0, 0))
        self._init_weights(bn_momentum)

    def _init_weights(self, bn_momentum: float) -> None:
        """Glorot-uniform weights and zero biases for every convolution (as the Keras reference), then GdAM's heads
        as GdAM asks; BN momentum."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        if self.gdam is not None and self.gdam.identity_start:
            self.gdam.start_as_identity()

    @torch.jit.unused
    def set_attention_sampling(self, enabled: bool) -> None:
        """Sample the GdAM attention at evaluation too (for uncertainty maps from several forward passes)."""
        self.sample_attention = enabled

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"GRUNet expects input of shape (B, {self.in_channels}, H, W), got {list(x.shape)}"
            )
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise ValueError(
                f"GRUNet needs spatial sides that are multiples of {self.divisor}, got {x.shape[2]} x {x.shape[3]}"
            )

    def encode(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The encoder levels [(B, C_i, H / 2**i, W / 2**i) for i < 4] and the bottleneck (B, C_4, H / 16, W / 16)."""
        self._check_input(x)
        enc: List[torch.Tensor] = [self.stem(x)]
        for stage in self.encoder:
            enc.append(stage(enc[-1]))
        return enc, self.bottleneck(enc[-1])

    def forward(self, x: torch.Tensor, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, out_channels[+1], H, W) of x (B, in_channels, H, W), H and W multiples of 16.

        ``text``: the GdAM prompt embeddings, (P, D) for every image or (B, P, D) (or (1, P, D)) one set per image,
        e.g. an organ's from :class:`bundle.networks.text_prior.OrganPrompts`; None: the ``text_prior`` buffer.
        Ignored without GdAM.
        """
        enc, u = self.encode(x)

        skips: List[torch.Tensor] = []
        for i, skip in enumerate(self.skips):
            skips.append(skip(enc[i]))

        attention: List[torch.Tensor] = []
        if self.gdam is not None and self.text_projection is not None:
            text_map = self.text_projection(self.text_prior if text is None else text.to(x.dtype))
            attention = self.gdam(u, text_map, self.training or self.sample_attention)

        skips.reverse()  # deepest first, as the decoder runs
        for level, stage in enumerate(self.decoder):
            u = stage(u, skips[level])
            if len(attention) > 0:
                u = u * attention[level]
            u = self.dropout(u)
        if self.distance is not None:
            return torch.cat([self.head(u), self.distance(u)], dim=1)
        return self.head(u)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter values of ``module``; BatchNorm running statistics are buffers, not counted."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_bn_statistics(module: nn.Module) -> int:
    """Number of BatchNorm running-mean and running-variance values in ``module``."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            total += m.running_mean.numel() + m.running_var.numel()
    return total
