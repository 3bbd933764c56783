"""Active learning: rank unlabeled images by the disagreement of several GdAM-sampled predictions."""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from fastapi import HTTPException

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import name_to_device

from bundle.errors import InputError
from bundle.io.images import read_rgb
from bundle.pipeline.predict import TilePredictor
from grunet_label.infers import NucleusMaskInfer

__all__ = ["GdAMUncertainty", "sampled_variance"]

logger = logging.getLogger(__name__)


def sampled_variance(probs: torch.Tensor) -> float:
    """Mean over pixels of the variance over samples.

    Args:
        probs: (S, ...) nucleus probabilities of S >= 2 sampled forward passes.

    Returns:
        The mean per-pixel variance, in [0, 0.25].
    """
    if probs.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {probs.shape[0]}")
    return float(probs.float().var(dim=0, unbiased=False).mean())


class GdAMUncertainty(Strategy):
    """Next image to label: the unlabeled one whose GdAM-sampled predictions disagree most.

    GRU-Net's Gaussian attention (GdAM) can be sampled at evaluation (``set_attention_sampling(True)``); each
    of ``samples`` forward passes gives a sigmoid probability map, and the score of an image is the mean
    per-pixel variance across them. Scores are kept in the datastore (``gdam_uncertainty``, with the model's
    mtime in ``gdam_uncertainty_ts``) and recomputed only after the model file changes. Request options:
    ``samples`` (default from the constructor), ``max_images`` (score at most this many new images per call;
    0: all), ``device``.

    Args:
        infer_task: the mask task whose network and preprocessing are used (its network is copied).
        samples: forward passes per image, >= 2.
        max_images: most images scored per call (0: all).
    """

    KEY = "gdam_uncertainty"

    def __init__(self, infer_task: NucleusMaskInfer, samples: int = 4, max_images: int = 0) -> None:
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        super().__init__("Unlabeled image with the highest variance across GdAM-sampled predictions")
        self.infer_task = infer_task
        self.samples = samples
        self.max_images = max_images
        self._lock = threading.Lock()

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Optional[Dict[str, Any]]:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        samples, max_images = self._options(request)
        model_path = self.infer_task.get_path()
        model_ts = int(os.stat(model_path).st_mtime) if model_path and os.path.exists(model_path) else 0

        with self._lock:
            scores: Dict[str, float] = {}
            todo: List[str] = []
            for image in images:
                info = datastore.get_image_info(image)
                if info.get(f"{self.KEY}_ts") == model_ts and self.KEY in info:
                    scores[image] = float(info[self.KEY])
                else:
                    todo.append(image)
            todo = todo[:max_images] if max_images > 0 else todo
            if todo:
                network = self._sampling_network(request)
                for image in todo:
                    start = time.time()
                    try:
                        scores[image] = self._score(network, datastore.get_image_uri(image), samples, request)
                    except InputError as e:  # one unreadable image (or a slide) does not fail the request
                        logger.warning(f"{self.KEY}: {image} not scored: {e}")
                        continue
                    datastore.update_image_info(image, {self.KEY: scores[image], f"{self.KEY}_ts": model_ts})
                    logger.info(f"{self.KEY}: {image} => {scores[image]:.6f} ({time.time() - start:.1f}s)")
        if not scores:
            return None

        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        best, score = ranked[0]
        return {"id": best, self.KEY: score, "samples": samples, "ranking": [[k, v] for k, v in ranked]}

    def _options(self, request: Dict[str, Any]) -> Tuple[int, int]:
        """(samples, max_images) of the request; HTTP 422 when invalid."""
        try:
            samples = int(request.get("samples", self.samples))
            max_images = int(request.get("max_images", self.max_images))
        except (TypeError, ValueError) as err:
            raise HTTPException(status_code=422, detail=f"samples and max_images must be integers: {err}") from None
        if samples < 2:
            raise HTTPException(status_code=422, detail=f"samples must be >= 2, got {samples}")
        return samples, max_images

    def _sampling_network(self, request: Dict[str, Any]) -> torch.nn.Module:
        device = name_to_device(request.get("device", "cuda"))
        with self.infer_task.lock:
            network = copy.deepcopy(self.infer_task.segmenter().network)  # own copy: inference is untouched
        network.to(device).eval()
        network.set_attention_sampling(True)
        return network

    def _score(self, network: torch.nn.Module, image_path: str, samples: int, request: Dict[str, Any]) -> float:
        """Mean per-pixel variance of the nucleus probability over ``samples`` passes of the bundle's predictor."""
        device = name_to_device(request.get("device", "cuda"))
        with self.infer_task.lock:
            segmenter = self.infer_task.segmenter()
        predict = TilePredictor(network, segmenter.predictor.inferer, device, segmenter.predictor.patch_size)
        rgb = read_rgb(image_path, segmenter.max_image_pixels)
        probs = torch.stack([torch.from_numpy(predict(rgb)[0]) for _ in range(samples)])
        return sampled_variance(probs)
