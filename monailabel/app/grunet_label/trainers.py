"""Bundle training from the MONAI Label datastore, with a short-budget overlay on ``configs/train.json``."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import monai.bundle
from monai.bundle import ConfigParser

from monailabel.tasks.train.bundle import BundleTrainTask

from bundle.config_io import config_path, variant_overlays

__all__ = ["OVERLAY", "OverlayBundleTrainTask"]

OVERLAY = os.path.join(os.path.dirname(__file__), "train_overlay.json")


class OverlayBundleTrainTask(BundleTrainTask):
    """:class:`BundleTrainTask` reading ``configs/train.json`` plus overlay configs (later files win).

    MONAI Label overrides ``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data``,
    ``train#handlers`` and ``device``; the overlay (``train_overlay.json``) points ``ckpt_dir`` at the bundle's
    ``models/`` (``train.json`` alone saves under its ``output_dir``) and validates every epoch, so that the
    best-metric saver replaces ``models/model.pt``, which the next inference loads, even after one epoch; it
    drops the bundle's MLflow / resume steps, whose inputs (``dataset_dir``, run folders) do not exist on a
    labelling server.

    Args:
        path: bundle directory.
        conf: server ``--conf`` options; ``variant`` (``auto``, default: compact on CPU, full with CUDA; ``full`` or
            ``compact``) adds the variant's overlay first, so that training writes the variant's weight file
            (``models/model_compact.pt`` for the compact model).
        overlays: config files applied over the bundle's train config (and the variant's).
        kwargs: passed to :class:`BundleTrainTask`.
    """

    def __init__(self, path: str, conf: Dict[str, str], overlays: Sequence[str] = (OVERLAY,), **kwargs: Any) -> None:
        variant = [str(config_path(name, path)) for name in variant_overlays(conf.get("variant", "auto"))]
        self.overlays = [os.path.abspath(o) for o in (*variant, *overlays)]
        for overlay in self.overlays:
            if not os.path.isfile(overlay):
                raise FileNotFoundError(f"train overlay config not found: {overlay}")
        super().__init__(path, conf, **kwargs)

    def __call__(self, request: Dict[str, Any], datastore: Any) -> Any:
        """Train as :class:`BundleTrainTask` does, starting from the variant's weight file (``model_file`` of the
        configs, e.g. ``model_compact.pt``) unless the request names another (MONAI Label's default is ``model.pt``,
        the full model's)."""
        return super().__call__({"model_filename": self.bundle_config.get("model_file", "model.pt"), **request}, datastore)

    def _config_files(self) -> List[str]:
        return [self.bundle_config_path, *self.overlays]

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        bundle_config = ConfigParser()
        bundle_config.read_config([config, *self.overlays])
        bundle_config.config.update({self.const.key_bundle_root(): path})  # type: ignore[union-attr]
        return bundle_config

    def run_single_gpu(self, request: Dict[str, Any], overrides: Dict[str, Any]) -> None:
        monai.bundle.run(
            run_id=request.get("run_id", "run"),
            init_id=None,
            final_id=None,
            meta_file=self.bundle_metadata_path,
            config_file=self._config_files(),
            **overrides,
        )
