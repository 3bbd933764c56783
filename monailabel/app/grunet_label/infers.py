"""Infer tasks of the GRU-Net nuclei bundle: a binary mask per tile, and nucleus polygons for QuPath / DSA.

Both wrap MONAI Label's :class:`BundleInferTask` (network, preprocessing, inferer and postprocessing come from
the bundle's ``configs/inference.json``); the polygon task is modelled on the pathology sample app's HoVerNet
task (region loader, contours, ``PolygonWriter``, ``info()["pathology"] = True``).
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import LoadImaged, SaveImaged, SqueezeDimd
from PIL import Image

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.writer import PolygonWriter

from grunet_label.transforms import LoadRegiond, NucleusPolygonsd

__all__ = ["NucleusMaskInfer", "NucleusPolygonInfer", "xml_safe"]


def xml_safe(text: str) -> str:
    """``text`` without the characters that need escaping in an XML attribute (``&`` becomes "and")."""
    return text.replace("&", " and ").replace("<", "(").replace(">", ")").replace('"', "'").replace("  ", " ")


class _NucleusBundleInfer(BundleInferTask):
    """The bundle's inference as a MONAI Label segmentation task: no post-restore, no SaveImaged, strict loading.

    Args:
        path: bundle directory.
        conf: server ``--conf`` options.
        pre_filter: bundle pre-processing transforms to drop (e.g. ``[LoadImaged]``).
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Dict[str, str], pre_filter: Optional[Sequence] = None, **kwargs: Any) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.SEGMENTATION,
            add_post_restore=False,
            pre_filter=pre_filter,
            post_filter=[SaveImaged],
            load_strict=True,
            **kwargs,
        )


class NucleusMaskInfer(_NucleusBundleInfer):
    """Bundle inference on an image: the nucleus mask (H, W) uint8, 1 nucleus, 0 background, as a PNG.

    Args:
        path: bundle directory.
        conf: server ``--conf`` options.
        kwargs: passed to :class:`BundleInferTask` (e.g. ``train_mode``, ``skip_writer``).
    """

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [*super().post_transforms(data), SqueezeDimd(keys="pred", dim=0)]

    def writer(self, data: Dict[str, Any], extension: Any = None, dtype: Any = None) -> Tuple[Any, Any]:
        """Writes ``data["pred"]`` as an 8-bit PNG; returns (file, result json)."""
        pred = data[self.output_label_key]
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        mask = (np.squeeze(pred) > 0).astype(np.uint8)
        path = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
        Image.fromarray(mask).save(path)
        return path, {"nucleus_pixels": int(mask.sum()), "shape": list(mask.shape)}


class NucleusPolygonInfer(_NucleusBundleInfer):
    """Nucleus polygons of an image or slide region (``/infer/wsi_v2``), as ASAP XML, DSA JSON or JSON.

    Bundle inference, then ``split_instances`` and one outline per nucleus in level-0 pixels
    (:class:`NucleusPolygonsd`), written by MONAI Label's ``PolygonWriter``.

    Args:
        path: bundle directory.
        conf: server ``--conf`` options.
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, pre_filter=[LoadImaged], **kwargs)
        # MONAI Label writes the description into the ASAP XML unescaped: "H&E" would break the file
        self.description = xml_safe(self.description or "")
        self.labels = {"Nucleus": 1}
        self.label_colors = {"Nucleus": (0, 200, 0)}
        self._config["label_colors"] = self.label_colors

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [LoadRegiond(keys="image"), *super().pre_transforms(data)]

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [*super().post_transforms(data), NucleusPolygonsd(keys="pred", color=self.label_colors["Nucleus"])]

    def info(self) -> Dict[str, Any]:
        d = super().info()
        d["pathology"] = True
        return d

    def writer(self, data: Dict[str, Any], extension: Any = None, dtype: Any = None) -> Tuple[Any, Any]:
        """ASAP XML (``output=asap``), DSA JSON (``output=dsa``) or only the result json."""
        return PolygonWriter(label=self.output_label_key, json=self.output_json_key)(data)
