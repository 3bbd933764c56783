"""Training targets from nucleus masks: the nucleus mask and the normalised distance map of the distance head."""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils.type_conversion import convert_to_dst_type
from scipy import ndimage
from skimage import measure

from bundle.pipeline.split import as_2d

__all__ = ["MASK_KINDS", "mask_kind", "instance_labels", "normalized_distance", "NucleusTargetsd"]
MASK_KINDS = ("binary", "instances", "classes")
REGIONS_PER_INSTANCE = 2.0  # an instance map has about one region per id (MoNuSeg: at most 1.02); a class map many
FEW_IDS = 3  # up to this many ids, a region enclosed by others (no background around it) marks a class map


def mask_kind(mask: Any) -> str:
    """What a mask's values mean: ``"binary"`` (one foreground value), ``"instances"`` (one id per nucleus) or
    ``"classes"`` (a few values, each covering many separate regions: nucleus classes, or 0/128/255 borders; with
    at most :data:`FEW_IDS` values, also a region that lies inside others, such as a centre inside its ring).

    Args:
        mask: (H, W) or (1, H, W) integer or boolean mask; 0 is background.

    Returns:
        One of :data:`MASK_KINDS`.
    """
    m = as_2d(mask, "a nucleus mask").astype(np.int64)
    ids = np.unique(m)
    ids = ids[ids != 0]
    if len(ids) <= 1:
        return "binary"
    regions = measure.label(m, background=0, connectivity=2)  # regions of one value, 8-connected
    if regions.max() > REGIONS_PER_INSTANCE * len(ids):
        return "classes"
    if len(ids) <= FEW_IDS and _some_region_enclosed(m, regions):
        return "classes"  # a centre inside a border ring: one or two nuclei of a 0/128/255 map
    return "instances"


def _some_region_enclosed(mask: np.ndarray, regions: np.ndarray) -> bool:
    """Whether a region of ``regions`` touches no background (the image's edge counts as background)."""
    background = np.pad(mask == 0, 1, constant_values=True)
    near = ndimage.binary_dilation(background, structure=np.ones((3, 3), bool))[1:-1, 1:-1]
    return len(np.unique(regions[near & (regions > 0)])) < regions.max()


def instance_labels(mask: Any) -> np.ndarray:
    """Instance ids from a mask: kept when the mask holds instance ids; the connected components of its non-zero
    pixels when it is binary or a class map (see :func:`mask_kind`).

    Args:
        mask: (H, W) or (1, H, W) integer or boolean mask; 0 is background.

    Returns:
        int32 (H, W), 0 background, one positive id per nucleus.

    Raises:
        ValueError: ``mask`` is not (H, W) or (1, H, W).
    """
    m = as_2d(mask, "a nucleus mask")
    if mask_kind(m) != "instances":
        return ndimage.label(m > 0)[0].astype(np.int32)
    return m.astype(np.int32)


def normalized_distance(instances: Any) -> np.ndarray:
    """Distance of every nucleus pixel to the border of its own nucleus, divided by that nucleus's largest distance.

    Touching nuclei get separate peaks, because each is measured to its own border.

    Args:
        instances: (H, W) instance ids, 0 background.

    Returns:
        float32 (H, W) in [0, 1]: 1 at each nucleus centre, small at its border, 0 on the background.
    """
    labels = np.asarray(instances)
    out = np.zeros(labels.shape, np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # one pixel of background around the box so that the border of the image counts as a border
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = labels[padded] == index
        dist = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            out[padded][inside] = (dist / peak)[inside]
    return out


class NucleusTargetsd(MapTransform):
    """Replace a nucleus mask by the two training targets: channel 0 the binary mask, channel 1 the normalised
    distance (:func:`normalized_distance` of :func:`instance_labels`).

    Shapes: (1, H, W) or (H, W) mask -> (2, H, W) float32, of the input's type (a MetaTensor keeps its metadata).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            instances = instance_labels(np.rint(array))
            stacked = np.stack([instances > 0, normalized_distance(instances)]).astype(np.float32)
            d[key] = convert_to_dst_type(torch.from_numpy(stacked), value, dtype=torch.float32)[0]
        return d
