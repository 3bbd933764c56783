"""Infer tasks of the GRU-Net nuclei bundle: thin adapters from MONAI Label requests to the bundle's pipeline.

Both tasks run :class:`bundle.pipeline.segmenter.NucleusSegmenter`, built from the bundle's
``configs/inference.json`` (``segmenter``), so a tile gives the same nuclei here as through the bundle command
line, ``scripts/segment_slides.py`` and the MONAI Deploy app. Slides are read by the bundle's reader and
resampled to the model's resolution. The weights are reloaded when ``models/model.pt`` changes (after
``/train``). Requests run one at a time per task (a lock), which bounds memory under concurrent requests.

- :class:`NucleusMaskInfer` (``/infer/<bundle>``): the nucleus mask of an image (PNG, 0/1), or with
  ``{"result_kind": "instances"}`` in the request's params the uint32 instance TIFF, with ``"geojson"`` the
  QuPath GeoJSON.
- :class:`NucleusPolygonInfer` (``/infer/wsi_v2/grunet_nuclei``): nucleus polygons of an image or a slide region
  (level-0 ``location`` and ``size`` at ``level``), as ASAP XML, DSA JSON or JSON (MONAI Label's ``PolygonWriter``;
  ``info()["pathology"] = True``, as in the pathology sample app).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from fastapi import HTTPException
from PIL import Image

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.transform.writer import PolygonWriter

from bundle.config_io import load_config
from bundle.errors import InputError
from bundle.io.slides import SlideSource, open_source
from bundle.pipeline.segmenter import NucleusSegmenter

__all__ = ["NucleusMaskInfer", "NucleusPolygonInfer", "xml_safe"]
logger = logging.getLogger(__name__)
LABEL = "Nucleus"
LABEL_COLOUR = (0, 200, 0)
REGION_ORIGIN = "region_origin"  # request key: level-0 (x, y) of pixels sent as an array (DSA), set by the task


def xml_safe(text: str) -> str:
    """``text`` without the characters that need escaping in an XML attribute (``&`` becomes "and")."""
    return text.replace("&", " and ").replace("<", "(").replace(">", ")").replace('"', "'").replace("  ", " ")


class _NucleusTask(InferTask):
    """The bundle's pipeline as a MONAI Label infer task; subclasses turn its result into the task's output.

    Args:
        path: bundle directory (``configs/inference.json``, ``models/model.pt``).
        conf: server ``--conf`` options: ``variant`` (``auto``, default: the compact model on CPU and the full one
            with CUDA, as everywhere in the bundle; ``full`` or ``compact``: a model variant of
            :data:`bundle.config_io.MODEL_VARIANTS`, with its weight file in ``models/``).
        description: task description shown in ``/info/``.
    """

    def __init__(self, path: str, conf: Dict[str, str], description: str) -> None:
        self.bundle_path = path
        self.variant = conf.get("variant", "auto")
        self.organ = conf.get("organ") or None  # the server's default organ; a request's "organ" overrides it
        config = load_config("inference", bundle_root=path, variant=self.variant)
        self.model_path = os.path.abspath(config.get_parsed_content("checkpoint"))
        metadata = config.get("_meta_", {})
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={LABEL: 1},
            dimension=2,
            description=xml_safe(description or metadata.get("description", "")),
            config={"label_colors": {LABEL: LABEL_COLOUR}},
        )
        self._segmenter: Optional[NucleusSegmenter] = None
        self._loaded_mtime = 0.0
        self.lock = threading.Lock()

    def is_valid(self) -> bool:
        return os.path.isfile(self.model_path)

    def get_path(self, validate: bool = True) -> Optional[str]:
        return self.model_path if (not validate or self.is_valid()) else None

    def segmenter(self) -> NucleusSegmenter:
        """The pipeline, built once from ``configs/inference.json``; weights reloaded when the file changed.
        Call with the task's lock held."""
        mtime = os.stat(self.model_path).st_mtime
        if self._segmenter is None:
            overrides = {"progress": False, "checkpoint": self.model_path}
            config = load_config("inference", bundle_root=self.bundle_path, overrides=overrides, variant=self.variant)
            self._segmenter = config.get_parsed_content("segmenter")
            self._segmenter.organ = self.organ  # set on the object: the config would evaluate "$..." and resolve "@..."
        elif mtime != self._loaded_mtime:
            self._segmenter.load_weights(self.model_path)
            logger.info("%s changed: weights reloaded", self.model_path)
        self._loaded_mtime = mtime
        return self._segmenter

    def __call__(self, request: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any]]:
        start = time.time()
        image = request.get("image")
        with tempfile.TemporaryDirectory(prefix="grunet_") as tmp:
            if isinstance(image, np.ndarray):  # a region sent as pixels (DSA): its location is where they lie
                path = os.path.join(tmp, "region.png")
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
                request = {**request, REGION_ORIGIN: [int(v) for v in (request.get("location") or (0, 0))], "location": None, "size": None}
            elif isinstance(image, (str, os.PathLike)):
                path = str(image)
            else:
                raise HTTPException(status_code=422, detail=f"image must be an image id, a file or an RGB array, got {type(image).__name__}")
            try:
                with self.lock:
                    return self.respond(request, path, Path(tmp), start)
            except InputError as e:
                raise HTTPException(status_code=422, detail=f"cannot read image '{os.path.basename(path)}': {e}") from None

    def respond(self, request: Dict[str, Any], path: str, tmp: Path, start: float) -> Tuple[Optional[str], Dict[str, Any]]:
        raise NotImplementedError


class NucleusMaskInfer(_NucleusTask):
    """The pipeline on a whole image: its nucleus mask, instance TIFF or GeoJSON (request ``result_kind``).

    Request options: ``result_kind`` (``mask`` (default): PNG, 1 nucleus, 0 background; ``instances``: the uint32
    instance TIFF; ``geojson``: QuPath detections), ``mpp`` (microns per pixel of the image), ``organ`` (e.g.
    ``breast``, for the organ prompts; default: the server's ``--conf organ``, else unknown).

    Args:
        path: bundle directory.
        conf: server ``--conf`` options.
    """

    OUTPUTS = ("mask", "instances", "geojson")

    def __init__(self, path: str, conf: Dict[str, str]) -> None:
        super().__init__(path, conf, "GRU-Net nucleus mask of an H&E image (instances with result_kind=instances)")

    def respond(self, request: Dict[str, Any], path: str, tmp: Path, start: float) -> Tuple[Optional[str], Dict[str, Any]]:
        output = request.get("result_kind") or "mask"
        if output not in self.OUTPUTS:
            raise HTTPException(status_code=422, detail=f"result_kind must be one of {', '.join(self.OUTPUTS)}, got {output!r}")
        summary = self.segmenter().segment(path, tmp, request.get("mpp"), name="result", organ=request.get("organ"))
        files = summary["files"]
        suffix = {"mask": ".png", "instances": ".tif", "geojson": ".geojson"}[output]
        result = tempfile.NamedTemporaryFile(suffix=suffix, delete=False).name
        if output == "mask":
            if "mask" not in files:
                raise HTTPException(status_code=422, detail=f"'{os.path.basename(path)}' is too large for a mask PNG; ask for result_kind=instances")
            mask = np.asarray(Image.open(files["mask"])) > 0
            Image.fromarray(mask.astype(np.uint8)).save(result)
        else:
            shutil.copyfile(files["instances" if output == "instances" else "geojson"], result)
        keys = ("nucleus_count", "nuclei_per_mm2_tissue", "conversion", "mpp", "mpp_source", "width", "height", "prompts")
        served = {"weights": os.path.basename(summary["weights"] or "")}
        return result, {**{k: summary.get(k) for k in keys}, **served, "latencies": {"total": round(time.time() - start, 2)}}


class NucleusPolygonInfer(_NucleusTask):
    """The pipeline on an image or a slide region: one polygon per nucleus, in level-0 pixels.

    Request options (MONAI Label's wsi_v2): ``location`` (level-0 x, y), ``size`` (width, height at ``level``;
    the whole input when absent or zero), ``level``, ``output`` (``asap``, ``dsa`` or ``json``), ``mpp``, ``organ``.

    Args:
        path: bundle directory.
        conf: server ``--conf`` options.
    """

    def __init__(self, path: str, conf: Dict[str, str]) -> None:
        super().__init__(path, conf, "GRU-Net nucleus polygons of H and E images and slide regions (QuPath, DSA, ASAP)")

    def info(self) -> Dict[str, Any]:
        d = super().info()
        d["pathology"] = True
        return d

    def respond(self, request: Dict[str, Any], path: str, tmp: Path, start: float) -> Tuple[Optional[str], Dict[str, Any]]:
        segmenter = self.segmenter()
        source = open_source(path, request.get("mpp"), default_mpp=segmenter.model_mpp, max_pixels=segmenter.max_image_pixels)
        box = self._box(source, request)
        _, tissue, thumb_down = segmenter.find_tissue(source)  # windows of glass are skipped, as everywhere
        t_read = time.time()
        with segmenter.segment_region(source, box, tissue, thumb_down, request.get("organ"), spill_dir=tmp).nuclei as nuclei:
            t_infer = time.time()
            origin = np.asarray(request.get(REGION_ORIGIN) or (0, 0))  # pixels sent as an array: where they lie
            annotation = {
                "location": [int(box[0] + origin[0]), int(box[1] + origin[1])],
                "size": [box[2] - box[0], box[3] - box[1]],
                "elements": [{"label": LABEL, "contours": [np.round(n.polygon + origin).astype(int).tolist()]} for n in nuclei],
                "labels": {LABEL: list(LABEL_COLOUR)},
            }
            count = len(nuclei)
        latencies = {"pre": round(t_read - start, 2), "infer": round(t_infer - t_read, 2), "post": 0.0, "total": round(time.time() - start, 2)}
        result = {"annotation": annotation, "nucleus_count": count, "latencies": latencies}
        data = {
            "result": result, "output": request.get("output", "dsa"), "model": request.get("model"),
            "description": self.description, "location": annotation["location"], "size": annotation["size"],
            "latencies": latencies, "result_write_to_file": request.get("result_write_to_file", True),
            "logging": request.get("logging", "INFO"),
        }
        return PolygonWriter(label="pred", json="result")(data)

    @staticmethod
    def _box(source: Any, request: Dict[str, Any]) -> Tuple[int, int, int, int]:
        """Level-0 (x0, y0, x1, y1) of the request's region, clipped to the input."""
        x, y = (int(v) for v in (request.get("location") or (0, 0)))
        w, h = (int(v) for v in (request.get("size") or (0, 0)))
        level = int(request.get("level") or 0)
        down = source.downsamples[level] if isinstance(source, SlideSource) and level < len(source.downsamples) else 1.0
        if w <= 0 or h <= 0:
            return 0, 0, source.width, source.height
        x0, y0 = max(0, x), max(0, y)
        return x0, y0, min(source.width, x + round(w * down)), min(source.height, y + round(h * down))
