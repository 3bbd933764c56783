"""The pipeline's split stage: network output -> nucleus mask and distance map -> instance labels (watershed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Hashable, Mapping, Optional

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

__all__ = ["DISTANCE_SIGMA", "as_2d", "binary_mask", "h_maxima_markers", "mark_unmarked_components", "split_instances", "InstanceSplitter", "SplitNucleusChannelsd"]

DISTANCE_SIGMA = 1.0  # pixels: smoothing of the predicted distance before its h-maxima are taken


def as_2d(array: Any, name: str) -> np.ndarray:
    """A (H, W) or (1, H, W) array or tensor (any device and dtype) as a NumPy (H, W) array.

    Raises:
        ValueError: any other shape; the message starts with ``name``.
    """
    a = array.detach().float().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (H, W) or (1, H, W), got {tuple(np.shape(array))}")
    return a


def binary_mask(prob: Any, threshold: float = 0.5, min_size: int = 10) -> np.ndarray:
    """Threshold a probability map, fill holes and drop specks.

    Args:
        prob: nucleus probability (H, W) or (1, H, W), values in [0, 1].
        threshold: nucleus where ``prob > threshold``.
        min_size: objects smaller than this many pixels are removed.

    Returns:
        bool (H, W).

    Raises:
        ValueError: ``prob`` is not (H, W) or (1, H, W).
    """
    p = as_2d(prob, "prob")
    mask = ndimage.binary_fill_holes(p > threshold)
    if min_size <= 1 or not mask.any():
        return mask
    components, _ = ndimage.label(mask)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def h_maxima_markers(energy: np.ndarray, mask: np.ndarray, height: float) -> np.ndarray:
    """The h-maxima of ``energy`` inside ``mask``, found nucleus group by nucleus group.

    The same pixels as ``skimage.morphology.h_maxima(energy, height) & mask`` for an energy that is positive inside
    the mask and zero outside it, at a fraction of the cost: the grey reconstruction behind h-maxima sorts every
    pixel of the image (about 1 s per megapixel), but maxima cannot interact across the zero background, so each
    8-connected group of mask pixels is reconstructed alone in its bounding box (framed by one pixel of zeros).
    A group whose peak is lower than ``height`` has no h-maximum: in the whole image the zero background, raised to
    0 by any group that reaches ``height``, floods it (:func:`split_instances` then gives it one marker of its own).

    Args:
        energy: float (H, W), > 0 inside ``mask`` and 0 outside it (the smoothed predicted distance times the mask).
        mask: bool (H, W).
        height: h of the h-maxima, > 0.

    Returns:
        bool (H, W): marker pixels.
    """
    markers = np.zeros(mask.shape, bool)
    groups, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    for label, box in enumerate(ndimage.find_objects(groups), start=1):
        inside = groups[box] == label
        crop = np.where(inside, energy[box], 0).astype(energy.dtype, copy=False)
        if crop.max() < height:
            continue
        crop = np.pad(crop, 1)
        markers[box] |= h_maxima(crop, height)[1:-1, 1:-1].astype(bool) & inside
    return markers


def mark_unmarked_components(markers: np.ndarray, components: np.ndarray, mask: np.ndarray) -> None:
    """Give each connected component of ``mask`` that holds no marker one marker pixel of its own, in place.

    Args:
        markers: int (H, W) marker labels, 0 where none; new labels continue after its maximum.
        components: int (H, W) connected components of ``mask`` (``scipy.ndimage.label``).
        mask: bool (H, W).
    """
    unmarked = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for label, component in enumerate(unmarked, start=int(markers.max()) + 1):
        r, c = np.argwhere(components == component)[0]
        markers[r, c] = label


def split_instances(
    prob: Any,
    threshold: float = 0.5,
    min_size: int = 10,
    min_distance: int = 6,
    sigma: float = 3.0,
    distance: Optional[Any] = None,
    marker_height: float = 0.2,
    distance_sigma: float = DISTANCE_SIGMA,
) -> np.ndarray:
    """Separate touching nuclei with a marker-controlled watershed inside the binary mask.

    With ``distance`` (the network's distance head): markers are the regional maxima of the predicted distance
    (smoothed by a Gaussian of ``distance_sigma`` pixels) that rise at least ``marker_height`` above their
    surroundings (h-maxima), flooded along the predicted distance. Without it: markers are the local
    maxima of the (Gaussian-smoothed) distance transform of the mask, at least ``min_distance`` pixels apart.
    Either way every connected component of the mask gets one marker at least.

    Args:
        prob: nucleus probability (H, W) or (1, H, W), or a binary mask.
        threshold: see :func:`binary_mask`.
        min_size: see :func:`binary_mask`.
        min_distance: smallest distance in pixels between two nucleus centres (about a nucleus radius); mask-only.
        sigma: smoothing of the distance transform before peak finding, in pixels; mask-only. The defaults (6, 3.0)
            scored best by AJI on 8 MoNuSeg training images at 40x (``scripts/evaluate_instances.py``).
        distance: predicted normalised distance (H, W) or (1, H, W) in [0, 1] (array or tensor), or None.
        marker_height: h of the h-maxima markers, in normalised-distance units. The default 0.2 scored best by AJI
            on 8 MoNuSeg training images (``scripts/research/train_distance_head.py``).
        distance_sigma: smoothing of the predicted distance before its h-maxima are taken, in pixels.

    Returns:
        int32 (H, W): 0 background, 1..N one label per nucleus.

    Raises:
        ValueError: ``prob`` or ``distance`` has the wrong shape.
    """
    mask = binary_mask(prob, threshold, min_size)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    components, _ = ndimage.label(mask)
    if distance is not None:
        energy = as_2d(distance, "distance").astype(np.float32)
        if energy.shape != mask.shape:
            raise ValueError(f"distance is {energy.shape[0]}x{energy.shape[1]}, prob is {mask.shape[0]}x{mask.shape[1]}")
        smooth = (ndimage.gaussian_filter(energy, distance_sigma) if distance_sigma > 0 else energy) * mask
        markers, _ = ndimage.label(h_maxima_markers(smooth, mask, marker_height))
    else:
        energy = ndimage.distance_transform_edt(mask)
        if sigma > 0:
            energy = ndimage.gaussian_filter(energy, sigma) * mask
        peaks = peak_local_max(energy, min_distance=min_distance, labels=components, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    mark_unmarked_components(markers, components, mask)  # a very small or flat component keeps a marker of its own
    labels = watershed(-energy, markers, mask=mask)
    # consecutive labels 1..N
    ids = np.unique(labels)
    lut = np.zeros(ids.max() + 1, np.int32)
    lut[ids[ids > 0]] = np.arange(1, (ids > 0).sum() + 1)
    return lut[labels]


@dataclass(frozen=True)
class InstanceSplitter:
    """The splitting settings of the bundle (declared once, in ``configs/inference.json``), applied to one tile.

    Args:
        threshold: nucleus where the probability exceeds it, in (0, 1).
        min_size: smallest nucleus in model pixels.
        min_distance: smallest distance between nucleus centres in model pixels (mask-only splitting).
        sigma: smoothing of the mask's distance transform in model pixels (mask-only splitting).
        marker_height: h-maxima height on the predicted distance (networks with a distance head).
        distance_sigma: smoothing of the predicted distance before its h-maxima, in model pixels.

    Raises:
        ValueError: a threshold outside (0, 1), or a negative size, distance, sigma or height.
    """

    threshold: float = 0.5
    min_size: int = 10
    min_distance: int = 6
    sigma: float = 3.0
    marker_height: float = 0.2
    distance_sigma: float = DISTANCE_SIGMA

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if min(self.min_size, self.min_distance, self.sigma, self.marker_height, self.distance_sigma) < 0:
            raise ValueError(f"min_size, min_distance, sigma, marker_height and distance_sigma must be >= 0, got {self}")

    def __call__(self, prob: Any, distance: Optional[Any] = None) -> np.ndarray:
        """int32 (H, W) instance labels of a probability map (H, W) and optional distance map (H, W)."""
        return split_instances(
            prob, self.threshold, self.min_size, self.min_distance, self.sigma, distance, self.marker_height, self.distance_sigma
        )


class SplitNucleusChannelsd(MapTransform):
    """Move the distance channel of a two-channel network output or target to a key of its own.

    For every key holding (2, H, W) (nucleus, distance), ``d[key]`` becomes (1, H, W) (nucleus) and
    ``d[key + "_" + postfix]`` (1, H, W) (distance); a (1, H, W) value (a network without a distance head, or a
    mask-only target) is left as it is. Mask consumers (Dice, writers, MONAI Deploy, MONAI Label) keep reading
    ``pred`` and ``label``; instance splitting reads ``pred_distance`` when it is there.

    Args:
        keys: keys to split, e.g. ``["pred", "label"]``.
        postfix: name part of the distance key. Default ``"distance"``.
        allow_missing_keys: do not fail on a missing key (inference has no label). A key holding None is skipped.

    Raises:
        ValueError: a value that is not channel-first with 1 or 2 channels.
    """

    def __init__(self, keys: KeysCollection, postfix: str = "distance", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.postfix = postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if value is None:  # an evaluator without labels passes label=None
                continue
            if value.ndim != 3 or value.shape[0] not in (1, 2):
                raise ValueError(f"{key}: expected (1, H, W) or (2, H, W) (nucleus[, distance]), got {tuple(value.shape)}")
            if value.shape[0] == 2:
                d[f"{key}_{self.postfix}"] = value[1:]
                d[key] = value[:1]
        return d
