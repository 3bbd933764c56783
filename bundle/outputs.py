"""Writing inference results: the nucleus mask PNG and an overlay PNG per input image.

For each input ``<stem>.<ext>`` the :class:`SegmentationWriter` handler writes into ``output_dir``:

- ``<stem>_seg.png``: uint8, 0 background, 255 nucleus, the same H x W as the input;
- ``<stem>_overlay.png``: the input with nuclei tinted and outlined in green;

and, at the end of the run, ``report.json`` listing what was written and which inputs were skipped and why.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from monai.utils import min_version, optional_import
from PIL import Image
from scipy import ndimage

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
    Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["mask_to_png_array", "overlay", "SegmentationWriter"]
logger = logging.getLogger(__name__)
OVERLAY_COLOUR = np.array([0, 255, 0], dtype=np.float32)


def mask_to_png_array(mask: Any) -> np.ndarray:
    """Binary mask (1, H, W) or (H, W), positive where > 0.5 -> uint8 (H, W) with values {0, 255}."""
    arr = torch.as_tensor(mask).detach().cpu().numpy()
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ValueError(f"mask must be (1, H, W) or (H, W), got {arr.shape}")
        arr = arr[0]
    return np.where(arr > 0.5, 255, 0).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Tint nuclei and draw their outlines on an RGB image.

    Args:
        image: uint8 (H, W, 3).
        mask: (H, W), nucleus where > 0.
        alpha: tint strength inside nuclei.

    Returns:
        uint8 (H, W, 3).
    """
    fg = mask > 0
    edge = fg & ~ndimage.binary_erosion(fg)
    out = image.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * OVERLAY_COLOUR
    out[edge] = OVERLAY_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def _image_hwc(image: Any) -> np.ndarray:
    """(3, H, W) image in [0, 1] or [0, 255] -> uint8 (H, W, 3)."""
    arr = torch.as_tensor(image).detach().cpu().float().numpy()
    scale = 255.0 if arr.max() <= 1.0 + 1e-6 else 1.0
    return np.moveaxis(np.clip(arr * scale, 0, 255), 0, -1).astype(np.uint8)


class SegmentationWriter:
    """Ignite handler writing ``<stem>_seg.png`` and ``<stem>_overlay.png`` for every item of each iteration.

    Args:
        output_dir: destination folder (created when missing).
        pred_key: key of the binary prediction (1, H, W) in the decollated engine output.
        image_key: key of the input image (3, H, W), used for the overlay and to name the files.
        skipped: inputs left out before the run (``[{"file", "reason"}]``), reported in ``report.json``.
        write_overlay: also write the overlay PNG.
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike],
        pred_key: str = "pred",
        image_key: str = "image",
        skipped: Optional[Sequence[Dict[str, str]]] = None,
        write_overlay: bool = True,
    ):
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.image_key = image_key
        self.skipped = list(skipped or [])
        self.write_overlay = write_overlay
        self.written: List[Dict[str, Any]] = []
        self._stems: set = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write_report)

    def _reset(self, engine: Engine) -> None:
        self.written.clear()
        self._stems.clear()

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            self.write_item(item)

    def write_item(self, item: Dict[str, Any]) -> Path:
        """Write the files of one decollated item; returns the mask path."""
        image = item[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        source = Path(str(meta.get("filename_or_obj", f"image_{len(self.written)}.png")))
        stem = source.stem
        if stem in self._stems:  # e.g. tile.png and tile.tif in one folder: keep both
            stem = f"{stem}_{source.suffix.lstrip('.').lower()}"
        self._stems.add(stem)
        mask = mask_to_png_array(item[self.pred_key])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seg_path = self.output_dir / f"{stem}_seg.png"
        Image.fromarray(mask).save(seg_path)
        record: Dict[str, Any] = {"image": str(meta.get("filename_or_obj", stem)), "mask": str(seg_path)}
        if self.write_overlay:
            overlay_path = self.output_dir / f"{stem}_overlay.png"
            Image.fromarray(overlay(_image_hwc(image), mask)).save(overlay_path)
            record["overlay"] = str(overlay_path)
        record["nucleus_fraction"] = float((mask > 0).mean())
        self.written.append(record)
        logger.info("wrote %s (nucleus fraction %.3f)", seg_path, record["nucleus_fraction"])
        return seg_path

    def _write_report(self, engine: Engine) -> None:
        report = {"written": self.written, "skipped": self.skipped}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "report.json").write_text(json.dumps(report, indent=2))
        logger.info("%d image(s) segmented, %d skipped -> %s", len(self.written), len(self.skipped), self.output_dir)
        for s in self.skipped:
            logger.warning("skipped %s: %s", s["file"], s["reason"])
