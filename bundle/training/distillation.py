"""Knowledge distillation: train a network on the true masks and on a teacher network's cached output maps.

The teacher's full-resolution maps are computed once per training image
(``scripts/research/cache_predictions.py`` writes ``<cache_dir>/<id>.npz`` with ``prob`` and ``distance``, the
sigmoids of its two outputs). :class:`LoadTeacherMapsd` puts them under a key of their own before the random
crops (which move them with the image), and :class:`TeacherTargetsd` appends them to the label after the crops, so
that the trainer's ``(image, label)`` batch carries both and :class:`DistillationLoss` can score the network
against each.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.errors import InputError
from bundle.training.losses import NucleusLoss, distance_loss

__all__ = ["TEACHER_MAPS", "LoadTeacherMapsd", "TeacherTargetsd", "DistillationLoss"]

TEACHER_MAPS = ("prob", "distance")  # arrays of a cache file, in the order of the network outputs


class LoadTeacherMapsd(MapTransform):
    """Load the teacher's cached maps of an item: ``d[key]`` becomes a (2, H, W) float32 tensor (nucleus
    probability, normalised distance) read from ``<cache_dir>/<d[id_key]>.npz``.

    Args:
        keys: key to fill, e.g. ``"teacher"``.
        cache_dir: folder of the cache files.
        id_key: item key that names the cache file. Default ``"id"`` (the datalists' image id).

    Raises:
        InputError: a missing, unreadable or incomplete cache file, or maps whose size differs from ``d["image"]``.
    """

    def __init__(self, keys: KeysCollection, cache_dir: str, id_key: str = "id"):
        super().__init__(keys)
        self.cache_dir = Path(cache_dir)
        self.id_key = id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        path = self.cache_dir / f"{d[self.id_key]}.npz"
        if not path.is_file():
            raise InputError(f"{path}: no teacher maps for this image; cache them with scripts/research/cache_predictions.py")
        try:
            with np.load(path) as cached:
                missing = [name for name in TEACHER_MAPS if name not in cached.files]
                if missing:
                    raise InputError(f"{path}: teacher maps without {', '.join(missing)}; cache them again with scripts/research/cache_predictions.py")
                maps = np.stack([cached[name].astype(np.float32) for name in TEACHER_MAPS])
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # cut short or not an .npz
            raise InputError(f"{path}: unreadable teacher maps ({type(err).__name__}: {err}); cache them again with scripts/research/cache_predictions.py") from err
        if "image" in d and tuple(d["image"].shape[-2:]) != maps.shape[-2:]:
            raise InputError(f"{path}: teacher maps are {maps.shape[-2:]}, the image is {tuple(d['image'].shape[-2:])}")
        for key in self.keys:
            d[key] = torch.from_numpy(maps)
        return d


class TeacherTargetsd(MapTransform):
    """Append the teacher maps to the label: (2, H, W) label and (2, H, W) teacher -> (4, H, W) label.

    Args:
        keys: the teacher key, e.g. ``"teacher"`` (removed from the item).
        label_key: key of the (2, H, W) nucleus and distance target. Default ``"label"``.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label"):
        super().__init__(keys)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            teacher = d.pop(key)
            d[self.label_key] = torch.cat([torch.as_tensor(d[self.label_key]), torch.as_tensor(teacher)], dim=0)
        return d


class DistillationLoss(nn.Module):
    """:class:`NucleusLoss` on the true targets plus, weighted by ``lambda_teacher``, binary cross-entropy of the
    nucleus logit to the teacher's probability and the distance terms against the teacher's distance.

    Args:
        lambda_teacher: weight of the teacher terms. Default 1.0.
        kwargs: weights of :class:`NucleusLoss` (``lambda_dice``, ``lambda_ce``, ``lambda_distance``).

    Shapes: ``pred`` (B, 2, H, W) nucleus and distance logits; ``target`` (B, 4, H, W): true mask, true
    distance, teacher probability, teacher distance (:class:`TeacherTargetsd`). A (B, 2, H, W) target (validation
    data without teacher maps) is scored by :class:`NucleusLoss` alone.
    """

    def __init__(self, lambda_teacher: float = 1.0, **kwargs: float):
        super().__init__()
        self.truth_loss = NucleusLoss(**kwargs)
        self.lambda_teacher = lambda_teacher

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] != 2 or target.shape[1] not in (2, 4):
            raise ValueError(f"DistillationLoss expects pred (B, 2, H, W) and target (B, 2 or 4, H, W), got {list(pred.shape)}, {list(target.shape)}")
        loss = self.truth_loss(pred, target[:, :2])
        if target.shape[1] == 2:
            return loss
        teacher_prob, teacher_distance = target[:, 2:3].float(), target[:, 3:4].float()
        teacher_terms = F.binary_cross_entropy_with_logits(pred[:, :1].float(), teacher_prob) + distance_loss(
            torch.sigmoid(pred[:, 1:].float()), teacher_distance, target[:, :1].float()
        )
        return loss + self.lambda_teacher * teacher_terms
