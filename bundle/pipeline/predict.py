"""The pipeline's predict stage: the network on one RGB tile, giving nucleus probability and distance maps."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["BACKGROUND_LOGIT", "TilePredictor", "TissueGatedNetwork"]

BACKGROUND_LOGIT = -20.0  # what a window without tissue predicts in every channel: probability 2e-9


class TissueGatedNetwork(torch.nn.Module):
    """Runs ``network`` only on the windows that hold tissue; the others get :data:`BACKGROUND_LOGIT`.

    The input carries the tissue mask as a fourth channel, so that a sliding-window inferer cuts it into the same
    windows as the image (flips of test-time augmentation included). A window whose mask is empty is background
    (glass): it is not computed. The segmenter dilates the mask beyond the windows' overlap, so that a computed
    window's tissue is never blended with a skipped window's constant.

    Args:
        network: (B, 3, H, W) -> (B, C, H, W) logits.
        out_channels: C.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], out_channels: int):
        super().__init__()
        self.network, self.out_channels = network, int(out_channels)
        self.windows = self.skipped = 0  # counts over this gate's life

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W): RGB and tissue (0 or 1) -> (B, C, H, W) logits."""
        keep = x[:, 3].flatten(1).amax(dim=1) > 0.5
        kept = int(keep.sum())
        self.windows += x.shape[0]
        self.skipped += x.shape[0] - kept
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        if kept == x.shape[0]:
            return self.network(x[:, :3].contiguous(memory_format=layout))
        out = x.new_full((x.shape[0], self.out_channels, *x.shape[2:]), BACKGROUND_LOGIT)
        if kept:
            out[keep] = self.network(x[keep, :3].contiguous(memory_format=layout)).to(out.dtype)
        return out


class TilePredictor:
    """Runs ``inferer(image, network)`` on an RGB uint8 tile and returns its probability maps.

    A tile smaller than ``patch_size`` (a small image) is padded by mirroring to ``patch_size`` before the
    network and the maps are cropped back, so any size of at least one pixel works.

    Args:
        network: (B, 3, H, W) in [0, 1] -> (B, C, H, W) logits, C = 1 (nucleus) or 2 (nucleus, distance).
        inferer: called as ``inferer(image, network)``; a sliding-window inferer of ``patch_size`` windows.
        device: where the network runs.
        patch_size: (height, width) of the inferer's windows.
        amp: run the network under bfloat16 autocast (a CPU where :func:`bundle.pipeline.runtimes.cpu_bf16_is_fast`, or CUDA); the maps are
            returned in float32.
        channels_last: run the network and its input in the channels-last memory format (faster convolutions
            on CPU and on tensor cores).
        stain_normalizer: applied to each tile (3, h, w), values in [0, 255], before the network (e.g.
            :class:`bundle.data.transforms.MacenkoNormalize`); None: none.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        inferer: Callable[[torch.Tensor, Callable], torch.Tensor],
        device: Union[str, torch.device] = "cpu",
        patch_size: Sequence[int] = (256, 256),
        amp: bool = False,
        stain_normalizer: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        channels_last: bool = False,
    ):
        if len(patch_size) != 2 or min(patch_size) <= 0:
            raise ValueError(f"patch_size must be (height, width) > 0, got {patch_size}")
        self.network, self.inferer = network, inferer
        self.device = torch.device(device)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.amp = bool(amp)
        self.stain_normalizer = stain_normalizer
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last and isinstance(network, torch.nn.Module):
            network.to(memory_format=torch.channels_last)
        self._gated: Optional[TissueGatedNetwork] = None
        self.windows_skipped = 0  # windows not computed so far because they held no tissue

    def _tensor(self, rgb: np.ndarray, tissue: Optional[np.ndarray] = None) -> torch.Tensor:
        """(1, 3, h, w) in [0, 1] on the device, stain-normalised, of an RGB uint8 (h, w, 3); with ``tissue``
        (h, w) bool, (1, 4, h, w) with the mask as the fourth channel."""
        image = torch.tensor(rgb).permute(2, 0, 1).float()  # a copy: PIL arrays are read-only
        if self.stain_normalizer is not None:
            image = torch.as_tensor(self.stain_normalizer(image), dtype=torch.float32)
        image = image.div_(255.0).clamp_(0.0, 1.0)
        if tissue is not None:
            image = torch.cat([image, torch.from_numpy(np.ascontiguousarray(tissue, dtype=np.float32))[None]])
        return image[None].to(self.device).contiguous(memory_format=self.memory_format)

    def _gate(self) -> TissueGatedNetwork:
        """The network behind a tissue gate, made again when the network changes (its output channels found on
        one window of zeros)."""
        if self._gated is None or self._gated.network is not self.network:
            probe = torch.zeros((1, 3, *self.patch_size), device=self.device).contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, enabled=self.amp, dtype=torch.bfloat16):
                channels = self.network(probe).shape[1]
            self._gated = TissueGatedNetwork(self.network, channels)
        return self._gated

    @torch.no_grad()
    def __call__(
        self, rgb: np.ndarray, context: Optional[np.ndarray] = None, tissue: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Nucleus probability (h, w) float32 of an RGB uint8 tile (h, w, 3), and the normalised distance (h, w)
        float32 when the network has a distance head (None otherwise).

        Args:
            rgb: the tile.
            context: for a context inferer (:class:`bundle.pipeline.inferers.ContextWindowInferer`), the canvas
                around the tile, RGB uint8; None: the inferer makes it from the tile (so does a tile smaller than
                ``patch_size``, which is padded).
            tissue: (h, w) bool, where the tile holds tissue: windows without any are not computed
                (:class:`TissueGatedNetwork`; ignored with a context view); None, or all True: every window is.

        Raises:
            ValueError: ``rgb`` is not (h, w, 3) with h, w >= 1, or ``tissue`` is not (h, w).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"tile must be (h, w, 3) RGB, got {rgb.shape}")
        h, w = rgb.shape[:2]
        if tissue is not None and tissue.shape != (h, w):
            raise ValueError(f"tissue must be {(h, w)}, got {tissue.shape}")
        if tissue is not None and (context is not None or tissue.all()):
            tissue = None
        pad_h, pad_w = max(0, self.patch_size[0] - h), max(0, self.patch_size[1] - w)
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
            tissue = None if tissue is None else np.pad(tissue, ((0, pad_h), (0, pad_w)), mode="symmetric")
            context = None
        extra = {} if context is None else {"context": self._tensor(context)}
        network = self.network if tissue is None else self._gate()
        skipped = 0 if tissue is None else network.skipped
        with torch.autocast(self.device.type, enabled=self.amp, dtype=torch.bfloat16):
            logits = self.inferer(self._tensor(rgb, tissue), network, **extra)
        if tissue is not None:
            self.windows_skipped += network.skipped - skipped
        out = torch.sigmoid(logits.float())[0, :, :h, :w].cpu().numpy()
        return out[0], (out[1] if out.shape[0] > 1 else None)
