"""Operators of the nuclei Deploy application: input scanning and loading, nucleus outputs, whole slides.

The graph (see ``app.py``)::

    InputLoaderOperator --image--> MonaiBundleInferenceOperator --pred--> NucleusWriterOperator
                        --item-------------------------------------------> NucleusWriterOperator
                        --slide--> SlideSegmenterOperator

- :class:`InputLoaderOperator` emits one input per call: an image as an SDK ``Image`` (H, W, 3, uint8) for the
  bundle inference operator plus an :class:`InputItem` for the writer, or a slide path for the slide operator.
  An input that cannot be read is reported (:class:`RunReport`) and nothing is emitted for it.
- ``MonaiBundleInferenceOperator`` (the SDK's) runs the TorchScript bundle (``models/model.ts``) with the
  preprocessing, inferer and postprocessing embedded in it and returns the binary mask (H, W), uint8 {0, 1}.
- :class:`NucleusWriterOperator` splits the mask into nuclei and writes the mask, overlay, GeoJSON, CSV and summary.
- :class:`SlideSegmenterOperator` segments a whole slide tile by tile with :class:`bundle.pipeline.segmenter.NucleusSegmenter`
  (the bundle operator holds the whole image in memory, which a slide does not fit).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

import numpy as np
import torch
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec
from PIL import Image as PILImage

from bundle.pipeline.measure import measure_nuclei, write_csv, write_geojson
from bundle.outputs import mask_to_png_array, overlay
from bundle.pipeline.split import split_instances
from bundle.io.slides import SlideReadError, SlideSource, open_source
from bundle.pipeline.segmenter import NucleusSegmenter

__all__ = [
    "MODEL_MPP",
    "InputItem",
    "RunReport",
    "InputLoaderOperator",
    "NucleusWriterOperator",
    "SlideSegmenterOperator",
]
logger = logging.getLogger(__name__)

MODEL_MPP = 0.25  # microns per pixel the network was trained at (40x); plain images are assumed to be at it


@dataclass
class InputItem:
    """An image on its way to the writer.

    Attributes:
        path: the input file.
        rgb: uint8 (H, W, 3), the pixels the model saw.
        seconds_start: ``time.perf_counter()`` when loading began.
    """

    path: Path
    rgb: np.ndarray
    seconds_start: float


@dataclass
class RunReport:
    """What the run wrote and skipped, kept in ``<output_dir>/report.json`` (rewritten after each input).

    Attributes:
        output_dir: where ``report.json`` goes.
        written: one summary per input written.
        skipped: ``{"input", "reason"}`` per input left out.
    """

    output_dir: Path
    written: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return Path(self.output_dir) / "report.json"

    def add_written(self, summary: Dict[str, Any]) -> None:
        with self._lock:
            self.written.append(summary)
            self._save()

    def add_skipped(self, path: Union[str, Path], reason: str) -> None:
        logger.error("skipped %s", reason)
        with self._lock:
            self.skipped.append({"input": str(path), "reason": reason})
            self._save()

    def _save(self) -> None:
        self.path.write_text(json.dumps({"written": self.written, "skipped": self.skipped}, indent=2))


class InputLoaderOperator(Operator):
    """Source: one input per call, in the order given; run it with a ``CountCondition`` of ``len(inputs)``.

    Outputs:
        image: SDK ``Image`` of the RGB pixels, (H, W, 3) uint8, ``original_channel_dim`` -1 (channel last), as
            the bundle's ``EnsureChannelFirstd`` expects.
        item: :class:`InputItem` for the writer.
        slide: ``Path`` of a whole-slide image, for :class:`SlideSegmenterOperator`.

    Args:
        fragment: the application.
        inputs: the files to read.
        report: where unreadable inputs are recorded.
    """

    def __init__(self, fragment: Fragment, *args, inputs: Sequence[Path], report: RunReport, **kwargs):
        self.inputs = list(inputs)
        self.report = report
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")
        spec.output("item")
        spec.output("slide")

    def compute(self, op_input, op_output, context):
        if self._next >= len(self.inputs):
            return
        path = self.inputs[self._next]
        self._next += 1
        t0 = time.perf_counter()
        try:
            source = open_source(path, None, default_mpp=MODEL_MPP)
        except SlideReadError as e:
            self.report.add_skipped(path, str(e))
            return
        if isinstance(source, SlideSource):
            logger.info("%s: whole-slide image -> tiled segmentation", path)
            op_output.emit(Path(path), "slide")
            return
        logger.info("%s: image %d x %d", path, source.width, source.height)
        op_output.emit(Image(source.rgb.copy(), metadata={"original_channel_dim": -1}), "image")
        op_output.emit(InputItem(Path(path), source.rgb, t0), "item")


class NucleusWriterOperator(Operator):
    """Sink: nuclei of the bundle's binary mask, and every output file of one image.

    Writes into ``<output_dir>/<stem>/``: ``<stem>_mask.png`` (uint8, 0 background, 255 nucleus, input size),
    ``<stem>_overlay.png`` (nuclei tinted and outlined in green), ``<stem>.geojson`` (QuPath FeatureCollection of
    nucleus polygons in pixels, with measurements), ``<stem>_nuclei.csv`` (one row per nucleus) and
    ``<stem>_summary.json``. Nuclei are split from the mask by :func:`bundle.pipeline.split.split_instances`.

    Inputs:
        pred: SDK ``Image`` (H, W) uint8 {0, 1} from ``MonaiBundleInferenceOperator``.
        item: the :class:`InputItem` it was computed from.

    Args:
        fragment: the application.
        output_dir: the output folder.
        report: where written inputs are recorded.
        min_size: smallest nucleus in pixels.
        min_distance: smallest distance between nucleus centres in pixels.
    """

    def __init__(
        self, fragment: Fragment, *args, output_dir: Path, report: RunReport, min_size: int = 10, min_distance: int = 6, **kwargs
    ):
        self.output_dir = Path(output_dir)
        self.report = report
        self.min_size, self.min_distance = min_size, min_distance
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")
        spec.input("item")

    def compute(self, op_input, op_output, context):
        pred = op_input.receive("pred")
        item: InputItem = op_input.receive("item")
        mask = np.asarray(pred.asnumpy() if isinstance(pred, Image) else pred)
        if mask.shape != item.rgb.shape[:2]:
            raise ValueError(f"{item.path}: mask {mask.shape} and image {item.rgb.shape[:2]} differ in size")
        stem = item.path.stem
        out = self.output_dir / stem
        try:
            out.mkdir(parents=True, exist_ok=True)
            summary = self._write(out, stem, item, mask)
        except OSError as e:
            self.report.add_skipped(item.path, f"{item.path}: cannot write the outputs to {out} ({e.strerror or e})")
            return
        self.report.add_written(summary)
        logger.info("%s: %d nuclei -> %s", item.path, summary["nucleus_count"], out)

    def _write(self, out: Path, stem: str, item: InputItem, mask: np.ndarray) -> Dict[str, Any]:
        labels = split_instances(mask, 0.5, self.min_size, self.min_distance)
        nuclei = measure_nuclei(labels, item.rgb, MODEL_MPP, MODEL_MPP)
        for i, n in enumerate(nuclei, start=1):
            n.id = i
        png = mask_to_png_array(mask)
        files = {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png"}
        PILImage.fromarray(png).save(files["mask"])
        PILImage.fromarray(overlay(item.rgb, png)).save(files["overlay"])
        files["geojson"] = write_geojson(out / f"{stem}.geojson", nuclei)
        files["csv"] = write_csv(out / f"{stem}_nuclei.csv", nuclei)
        summary = {
            "input": str(item.path),
            "kind": "image",
            "width": int(item.rgb.shape[1]),
            "height": int(item.rgb.shape[0]),
            "mpp": MODEL_MPP,
            "mpp_source": "assumed",
            "nucleus_count": len(nuclei),
            "nucleus_pixels": int((mask > 0).sum()),
            "seconds": round(time.perf_counter() - item.seconds_start, 2),
            "operator": "MonaiBundleInferenceOperator",
            "files": {k: str(v) for k, v in files.items()},
        }
        summary_path = out / f"{stem}_summary.json"
        summary["files"]["summary"] = str(summary_path)
        summary_path.write_text(json.dumps(summary, indent=2))
        return summary


class SlideSegmenterOperator(Operator):
    """Sink: a whole slide, tile by tile, with :class:`bundle.pipeline.segmenter.NucleusSegmenter`.

    Writes into ``<output_dir>/<stem>/`` what ``NucleusSegmenter.segment`` writes: ``<stem>_instances.tif``
    (uint32 instance labels at level 0: the mask), ``<stem>.geojson``, ``<stem>_nuclei.csv``,
    ``<stem>_thumbnail.png`` (the overlay, at thumbnail size) and ``<stem>_summary.json``.

    Inputs:
        slide: ``Path`` of the slide.

    Args:
        fragment: the application.
        network: the TorchScript network (the one the bundle operator runs).
        inferer: the bundle's inferer, ``inferer(image, network)``.
        output_dir: the output folder.
        report: where the slide is recorded as written or skipped.
        device: where the network runs.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        network: torch.nn.Module,
        inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
        output_dir: Path,
        report: RunReport,
        device: Union[str, torch.device] = "cpu",
        **kwargs,
    ):
        self.segmenter = NucleusSegmenter(network, inferer, device=device, model_mpp=MODEL_MPP, progress=False)
        self.output_dir = Path(output_dir)
        self.report = report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("slide")

    def compute(self, op_input, op_output, context):
        path: Path = op_input.receive("slide")
        try:
            summary = self.segmenter.segment(path, self.output_dir)
        except SlideReadError as e:
            self.report.add_skipped(path, str(e))
            return
        except OSError as e:
            self.report.add_skipped(path, f"{path}: cannot write the outputs to {self.output_dir} ({e.strerror or e})")
            return
        summary["kind"] = "slide"
        summary["operator"] = "SlideSegmenterOperator"
        self.report.add_written(summary)
