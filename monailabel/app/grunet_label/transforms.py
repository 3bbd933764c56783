"""Transforms of the polygon infer task: read an image or a slide region, turn a mask into nucleus polygons.

Coordinates follow MONAI Label's pathology convention: ``location`` (x, y) and ``size`` (width, height) in
level-0 pixels; arrays are row-major (H, W, C), as the bundle was trained, so no axis swap is needed.
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import optional_import

from bundle.io.images import read_rgb
from bundle.pipeline.measure import measure_nuclei
from bundle.pipeline.split import split_instances

openslide, _ = optional_import("openslide")

__all__ = ["SLIDE_SUFFIXES", "LoadRegiond", "NucleusPolygonsd"]

SLIDE_SUFFIXES = (".bif", ".mrxs", ".ndpi", ".scn", ".svs", ".svslide", ".tif", ".tiff", ".vms", ".vmu")


class LoadRegiond(MapTransform):
    """Read a plain image, or a region of a slide, as an RGB (H, W, 3) uint8 MetaTensor.

    Slides (OpenSlide formats) are read at ``data["level"]`` from ``data["location"]`` (level-0 x, y) over
    ``data["size"]`` (width, height at that level; the whole slide when absent). A plain image is read whole
    and gets ``location = (0, 0)``. The scale from the read level to level 0 goes to ``data["downsample"]``
    and the uint8 pixels to ``data[rgb_key]`` (for the per-nucleus measurements).

    Args:
        keys: the image key(s), each holding a path or an (H, W, 3) array.
        rgb_key: where the uint8 RGB copy goes.
    """

    def __init__(self, keys: KeysCollection, rgb_key: str = "rgb") -> None:
        super().__init__(keys)
        self.rgb_key = rgb_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            rgb, downsample = self._read(d, d[key])
            d.setdefault("location", [0, 0])
            d["downsample"] = downsample
            d[self.rgb_key] = rgb
            meta = {"spatial_shape": np.asarray(rgb.shape[:2]), "original_channel_dim": -1}
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(rgb)), meta=meta)
        return d

    @staticmethod
    def _read(d: Dict[Hashable, Any], source: Any) -> tuple:
        if not isinstance(source, (str, pathlib.Path)):
            rgb = np.asarray(source, dtype=np.uint8)
            if rgb.ndim != 3 or rgb.shape[-1] != 3:
                raise ValueError(f"image array must be (H, W, 3), got {rgb.shape}")
            return rgb, 1.0
        path = str(source)
        if pathlib.Path(path).suffix.lower() in SLIDE_SUFFIXES:
            slide = openslide.OpenSlide(path)
            level = int(d.get("level", 0) or 0)
            size = d.get("size") or slide.level_dimensions[level]
            if not size[0] or not size[1]:
                size = slide.level_dimensions[level]
            location = [int(v) for v in d.get("location") or (0, 0)]
            d["location"] = location
            region = slide.read_region(tuple(location), level, tuple(int(v) for v in size)).convert("RGB")
            return np.asarray(region, dtype=np.uint8), float(slide.level_downsamples[level])
        rgb = read_rgb(path)
        d["location"] = [0, 0]
        d["size"] = [rgb.shape[1], rgb.shape[0]]
        return rgb, 1.0


class NucleusPolygonsd(MapTransform):
    """Binary nucleus mask -> one polygon per nucleus, in MONAI Label's annotation format.

    The mask is split into touching nuclei (``bundle.pipeline.split.split_instances``), each outlined by
    ``bundle.pipeline.measure.measure_nuclei`` and mapped to level-0 pixels with ``location`` and ``downsample``.
    Writes ``data[result]["annotation"] = {"location", "size", "elements": [{"label", "contours"}], "labels"}``,
    which ``monailabel.transform.writer.PolygonWriter`` turns into ASAP XML or DSA JSON.

    Args:
        keys: the prediction key, (1, H, W) or (H, W) with nucleus > 0.
        label: class name of the polygons.
        color: RGB colour of that class in the viewers.
        rgb_key: the uint8 (H, W, 3) image the mask was computed on.
        distance_postfix: ``key + "_" + distance_postfix`` holds the network's normalised distance (1, H, W) when it
            has a distance head (``bundle.pipeline.split.SplitNucleusChannelsd``); nuclei are then split on its markers.
        marker_height: h-maxima height of those markers.
        min_size: smallest nucleus kept, in pixels.
        result: key of the result dictionary.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label: str = "Nucleus",
        color: tuple = (0, 200, 0),
        rgb_key: str = "rgb",
        distance_postfix: str = "distance",
        marker_height: float = 0.2,
        min_size: int = 10,
        result: str = "result",
    ) -> None:
        super().__init__(keys)
        self.label = label
        self.color = color
        self.rgb_key = rgb_key
        self.distance_postfix = distance_postfix
        self.marker_height = marker_height
        self.min_size = min_size
        self.result = result

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        location = [int(v) for v in d.get("location", [0, 0])]
        downsample = float(d.get("downsample", 1.0))
        for key in self.keys:
            pred = d[key].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else np.asarray(d[key])
            pred = np.squeeze(pred)
            rgb = d[self.rgb_key]
            if pred.shape != rgb.shape[:2]:
                raise ValueError(f"prediction {pred.shape} and image {rgb.shape[:2]} differ in size")
            distance = d.get(f"{key}_{self.distance_postfix}")  # (1, H, W) tensor, or None
            labels = split_instances(pred > 0, min_size=self.min_size, distance=distance, marker_height=self.marker_height)
            nuclei = measure_nuclei(labels, rgb, model_mpp=downsample, level0_mpp=1.0, origin=tuple(location))
            contours = [[np.round(n.polygon).astype(int).tolist()] for n in nuclei]
            d.setdefault(self.result, {})["annotation"] = {
                "location": location,
                "size": d.get("size", [0, 0]),
                "elements": [{"label": self.label, "contours": c} for c in contours],
                "labels": {self.label: list(self.color)},
            }
            d["nucleus_count"] = len(contours)
        return d
