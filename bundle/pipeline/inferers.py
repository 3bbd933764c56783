"""Inferers around MONAI's: test-time augmentation by flips, windows that carry their context view (DA-RefineNet),
and bfloat16 autocast on the input's device (training on CPUs where bfloat16 is fast)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

from bundle.pipeline.runtimes import resolve_bf16

__all__ = ["FLIPS", "AutocastInferer", "FlipTTAInferer", "ContextWindowInferer", "context_inferer"]

FLIPS = ((), (2,), (3,), (2, 3))  # identity, vertical, horizontal, both (dims of a (B, C, H, W) batch)


class AutocastInferer(Inferer):
    """Run ``inferer`` under bfloat16 autocast on the input's device and return float32 outputs.

    MONAI's trainers autocast on CUDA only (``amp``); this inferer gives a training forward pass bfloat16 on a CPU
    where it is fast too (about 2x the float32 training throughput of GRU-Net on an AMD Zen 4,
    ``scripts/benchmark_training.py``; :func:`bundle.pipeline.runtimes.cpu_bf16_is_fast`). The loss is then computed in float32 on the returned outputs.

    Args:
        inferer: the inferer to wrap (default: MONAI's ``SimpleInferer``).
        bf16: ``True``, ``False``, or ``"auto"`` (where bfloat16 pays on the input's device:
            :func:`bundle.pipeline.runtimes.resolve_bf16`).

    Shapes: the wrapped inferer's, (B, C_in, H, W) -> (B, C_out, H, W) float32.
    """

    def __init__(self, inferer: Optional[Callable[..., torch.Tensor]] = None, bf16: Any = "auto"):
        super().__init__()
        self.inferer = SimpleInferer() if inferer is None else inferer
        resolve_bf16(bf16, "cpu")  # refuses anything but a bool or "auto" now, not at the first batch
        self.bf16 = bf16

    def uses_bf16(self, device: Any) -> bool:
        """Whether inputs on ``device`` run in bfloat16."""
        return resolve_bf16(self.bf16, device)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.uses_bf16(inputs.device)):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return outputs.float()


class FlipTTAInferer(Inferer):
    """Run ``inferer`` on the input and on its flips, flip each output back and average the probabilities.

    The outputs are logits whose sigmoid is a probability (nucleus, normalised distance); the mean is taken over
    the sigmoids and returned as logits again, so post-processing is the same with and without augmentation.

    Args:
        inferer: the inferer to wrap, e.g. MONAI's ``SlidingWindowInferer``.
        flips: tensor dims flipped in each pass; ``[[]]`` (identity only) turns augmentation off. Default: the
            identity and the three flips of the two spatial axes (4 passes).

    Shapes: (B, C_in, H, W) -> the wrapped inferer's output (B, C_out, H, W).

    Raises:
        ValueError: ``flips`` is empty or names a dim other than 2 and 3.
    """

    def __init__(self, inferer: Callable[..., torch.Tensor], flips: Optional[Sequence[Sequence[int]]] = None):
        super().__init__()
        self.inferer = inferer
        self.flips = [tuple(f) for f in (FLIPS if flips is None else flips)]
        if not self.flips or any(d not in (2, 3) for f in self.flips for d in f):
            raise ValueError(f"flips must be a non-empty list of dims among (2, 3), got {flips}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.flips == [()]:
            return self.inferer(inputs, network, *args, **kwargs)
        total: Optional[torch.Tensor] = None
        for dims in self.flips:
            x = torch.flip(inputs, dims) if dims else inputs
            flipped = {k: torch.flip(v, dims) if dims and isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in kwargs.items()}
            y = self.inferer(x, network, *args, **flipped)  # image-shaped extras (a context canvas) are flipped alike
            prob = torch.sigmoid((torch.flip(y, dims) if dims else y).float())
            total = prob if total is None else total + prob
        mean = total / len(self.flips)
        return torch.logit(mean.clamp(1e-6, 1 - 1e-6))


class ContextWindowInferer(Inferer):
    """MONAI's sliding windows, each given its context view for a dual-input network (DA-RefineNet).

    The context of a window is the ``context_scale`` times larger field centred on it, at 1 / ``context_scale`` of
    the resolution: a ``roi_size`` crop of the *canvas*, the input's region widened by :meth:`margin` on every side
    and downsampled by ``context_scale``. The canvas is given by the caller (the pipeline reads it from the slide
    around each tile) or made from the input itself (edge pixels repeated beyond it). The network gets the window
    and its view stacked on channels.

    Args:
        roi_size: window (height, width).
        sw_batch_size: windows per network call.
        overlap: window overlap.
        context_scale: field of the context view, in window sides.
        mode: blending of overlapping windows (``"gaussian"`` or ``"constant"``).

    Shapes: ``inferer(inputs, network, context=None)``: inputs (B, C, H, W), context (B, C, (H + 2 m_h) / s,
    (W + 2 m_w) / s) -> the network's output (B, C_out, H, W).
    """

    def __init__(self, roi_size: Sequence[int], sw_batch_size: int = 1, overlap: float = 0.25, context_scale: int = 4, mode: str = "gaussian"):
        super().__init__()
        self.roi_size = (int(roi_size[0]), int(roi_size[1]))
        self.context_scale = int(context_scale)
        self.windows = SlidingWindowInferer(self.roi_size, sw_batch_size, overlap, mode=mode, with_coord=True)

    def margin(self) -> Tuple[int, int]:
        """Model pixels of context needed beyond the input on each side, (rows, columns)."""
        return (self.context_scale - 1) * self.roi_size[0] // 2, (self.context_scale - 1) * self.roi_size[1] // 2

    def canvas_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(rows, columns) of the canvas of an input of ``height`` x ``width``."""
        mh, mw = self.margin()
        return -(-(height + 2 * mh) // self.context_scale), -(-(width + 2 * mw) // self.context_scale)

    def canvas(self, inputs: torch.Tensor) -> torch.Tensor:
        """The canvas of ``inputs`` made from itself: edge pixels repeated over the margin, area-downsampled."""
        mh, mw = self.margin()
        padded = F.pad(inputs, (mw, mw, mh, mh), mode="replicate")
        return F.interpolate(padded, size=list(self.canvas_shape(inputs.shape[-2], inputs.shape[-1])), mode="area")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, context: Optional[torch.Tensor] = None, **kwargs: Any) -> torch.Tensor:
        canvas = (self.canvas(inputs) if context is None else context).to(inputs.device, inputs.dtype)
        h, w = self.roi_size
        s = self.context_scale

        def with_context(windows: torch.Tensor, slices: List[List[slice]], *a: Any, **kw: Any) -> torch.Tensor:
            views = []
            for window in slices:
                b, top, left = window[0].start, window[2].start, window[3].start
                y = min(max(0, round(top / s)), canvas.shape[-2] - h)
                x = min(max(0, round(left / s)), canvas.shape[-1] - w)
                views.append(canvas[b : b + 1, :, y : y + h, x : x + w])
            return network(torch.cat([windows, torch.cat(views).to(windows.dtype)], dim=1), *a, **kw)

        return self.windows(inputs, with_context, *args, **kwargs)


def context_inferer(inferer: Any) -> Optional[ContextWindowInferer]:
    """The :class:`ContextWindowInferer` inside ``inferer`` (itself, or wrapped as ``.inferer``), or None."""
    while inferer is not None and not isinstance(inferer, ContextWindowInferer):
        inferer = getattr(inferer, "inferer", None)
    return inferer

