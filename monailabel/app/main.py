"""MONAI Label app serving the GRU-Net nuclei bundle: mask and polygon inference, training, active learning.

Start it with ``scripts/monailabel_server.sh <studies dir> [port]``, which copies this folder to
``runs/monailabel/app``, links the bundle as ``model/pathology_nuclei_segmentation_grunet`` and runs
``monailabel start_server --app ... --conf models pathology_nuclei_segmentation_grunet --conf sam2 false``.

Tasks (names as in ``GET /info/``):
    infer ``pathology_nuclei_segmentation_grunet``: nucleus mask (PNG, 0/1) of an image.
    infer ``grunet_nuclei``: nucleus polygons (``/infer/wsi_v2/grunet_nuclei?output=asap|dsa|json``).
    train ``pathology_nuclei_segmentation_grunet``: bundle training on the datastore's final labels.
    strategies ``gdam_uncertainty`` (GdAM-sampled variance), ``random``, ``first``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import monailabel
import torch
from fastapi import HTTPException

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from grunet_label.infers import NucleusMaskInfer, NucleusPolygonInfer
from grunet_label.strategies import GdAMUncertainty
from grunet_label.trainers import OverlayBundleTrainTask

logger = logging.getLogger(__name__)

POLYGON_TASK = "grunet_nuclei"
WHOLE_REGION = 1 << 30  # a MONAI Label wsi_v2 tile size that covers any slide


def local_bundles(app_dir: str, conf: Dict[str, str]) -> Dict[str, str]:
    """Bundles named by ``--conf models a,b`` that exist under ``<app_dir>/model/`` (never downloaded).

    Raises:
        ValueError: no model named, or a named bundle is not a local folder.
    """
    names = [m.strip() for m in conf.get("models", "").split(",") if m.strip()]
    if not names:
        raise ValueError("no model given: start with --conf models pathology_nuclei_segmentation_grunet")
    bundles = {}
    for name in names:
        path = os.path.join(app_dir, "model", name)
        if not os.path.isdir(os.path.join(path, "configs")):
            raise ValueError(f"bundle '{name}' not found at {path} (this app never downloads bundles)")
        bundles[name] = os.path.realpath(path)
    return bundles


class GRUNetLabelApp(MONAILabelApp):
    """MONAI Label app for the GRU-Net nuclei bundle(s) found under ``<app_dir>/model``.

    Args:
        app_dir: this folder (holding ``model/<bundle>``).
        studies: datastore folder of images (labels under ``labels/final``).
        conf: ``--conf`` options: ``models`` (bundle names), ``variant`` (auto, the default: compact on CPU and full with CUDA; full or compact), ``gdam_samples`` (default 4),
            ``skip_trainers`` (default false).
    """

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = local_bundles(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MONAILabel - GRU-Net nuclei ({monailabel.__version__})",
            description="GRU-Net nucleus segmentation of H&E tiles and slides (MONAI bundle)",
            version=monailabel.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            infers[name] = NucleusMaskInfer(path, self.conf)
        first = next(iter(self.bundles.values()))
        infers[POLYGON_TASK] = NucleusPolygonInfer(first, self.conf)
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {name: OverlayBundleTrainTask(path, self.conf) for name, path in self.bundles.items()}

    def init_strategies(self) -> Dict[str, Strategy]:
        mask_task = self._infers[next(iter(self.bundles))]
        samples = int(self.conf.get("gdam_samples", "4"))
        return {"gdam_uncertainty": GdAMUncertainty(mask_task, samples=samples), "random": Random(), "first": First()}

    def infer(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Dict[str, Any]:
        self._check_image(request, datastore)
        return super().infer(request, datastore)

    def infer_wsi(self, request: Dict[str, Any], datastore: Optional[Datastore] = None) -> Dict[str, Any]:
        self._check_image(request, datastore)
        if not torch.cuda.is_available():
            # MONAI Label spreads slide tiles over CUDA devices by default; with none, the list is empty and
            # the tile loop divides by zero: run the tiles on the CPU instead.
            request = {**request, "multi_gpu": False}
        # one task for the whole region: the bundle's pipeline tiles it itself (tile size and margin of
        # configs/inference.json, each nucleus kept by the tile that holds its centre), so nuclei on MONAI
        # Label's tile borders are neither cut nor duplicated
        request = {**request, "tile_size": [WHOLE_REGION, WHOLE_REGION]}
        return super().infer_wsi(request, datastore)

    def _check_image(self, request: Dict[str, Any], datastore: Optional[Datastore]) -> None:
        """HTTP 404 for an unknown image id; else nothing (the tasks answer 422 for an image that does not decode)."""
        image = request.get("image")
        datastore = datastore if datastore else self.datastore()
        if not isinstance(image, str) or not isinstance(datastore, LocalDatastore):
            return
        path = image if os.path.isfile(image) else datastore.get_image_uri(image)
        if not path or not os.path.isfile(path):
            raise HTTPException(status_code=404, detail=f"image '{image}' is not in the datastore")
