"""H&E colour transforms: HED stain jitter (augmentation) and Macenko stain normalisation.

Array transforms do the maths on channel-first RGB images (3, H, W); the ``...d`` wrappers only move keys.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.apps.pathology.transforms import NormalizeHEStains
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.transforms.utils import generate_pos_neg_label_crop_centers, map_binary_to_indices
from monai.utils.type_conversion import convert_to_dst_type

__all__ = ["RGB_FROM_HED", "RandHEDJitter", "RandHEDJitterd", "MacenkoNormalize", "MacenkoNormalized", "RandContextCropd", "context_view"]

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
_LOG_EPS = float(np.log(1e-6))


def _check_rgb(img: Any, name: str) -> None:
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"{name} expects a channel-first RGB image (3, H, W), got shape {tuple(img.shape)}")


class RandHEDJitter(RandomizableTransform):
    """Random H&E stain augmentation in HED space (Tellez et al., 2018).

    The image is deconvolved into haematoxylin, eosin and DAB optical densities; each channel is scaled by a
    factor in ``[1 - sigma, 1 + sigma]`` and shifted by ``[-bias, bias]``, then recomposed.

    Args:
        prob: probability of applying the jitter.
        sigma: range of the multiplicative factor.
        bias: range of the additive shift (in the OD units of skimage's ``rgb2hed``).

    Shapes: (3, H, W) float in [0, 1] -> same shape and type, values in [0, 1]; (3k, H, W), k RGB views of the same
    tissue stacked on channels (DA-RefineNet's window and context view), gets the same jitter in every view.
    """

    def __init__(self, prob: float = 0.5, sigma: float = 0.05, bias: float = 0.02):
        RandomizableTransform.__init__(self, prob)
        if sigma < 0 or bias < 0:
            raise ValueError(f"sigma and bias must be >= 0, got sigma={sigma}, bias={bias}")
        self.sigma = sigma
        self.bias = bias
        self._alpha = np.ones(3, dtype=np.float32)
        self._beta = np.zeros(3, dtype=np.float32)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._alpha = self.R.uniform(1 - self.sigma, 1 + self.sigma, 3).astype(np.float32)
        self._beta = self.R.uniform(-self.bias, self.bias, 3).astype(np.float32)

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        if img.ndim != 3 or img.shape[0] % 3 != 0:
            raise ValueError(f"RandHEDJitter expects channel-first RGB views (3k, H, W), got shape {tuple(img.shape)}")
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = torch.as_tensor(img, dtype=torch.float32)
        flat = x.reshape(x.shape[0] // 3, 3, -1).transpose(0, 1).reshape(3, -1).clamp(min=1e-6)  # (3, views * N)
        hed = ((torch.log(flat) / _LOG_EPS).T @ torch.from_numpy(HED_FROM_RGB)).clamp(min=0)  # (N, 3)
        hed = hed * torch.from_numpy(self._alpha) + torch.from_numpy(self._beta)
        rgb = torch.exp((hed * _LOG_EPS) @ torch.from_numpy(RGB_FROM_HED)).clamp(0, 1)  # (N, 3)
        out = rgb.T.reshape(3, x.shape[0] // 3, -1).transpose(0, 1).reshape(x.shape)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Dictionary wrapper of :class:`RandHEDJitter`; the same draw is applied to every key."""

    def __init__(
        self, keys: KeysCollection, prob: float = 0.5, sigma: float = 0.05, bias: float = 0.02, allow_missing_keys: bool = False
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.jitter = RandHEDJitter(prob, sigma, bias)

    def set_random_state(self, seed: Optional[int] = None, state: Optional[np.random.RandomState] = None) -> "RandHEDJitterd":
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


class MacenkoNormalize(Transform):
    """Macenko stain normalisation to a reference H&E appearance, via MONAI's ``NormalizeHEStains``.

    Tiles with too little tissue to estimate stain vectors (blank background) are returned unchanged, with a
    warning, instead of failing.

    Args:
        tli: transmitted light intensity (background level, 0-255 scale).
        alpha: percentile tolerance for the stain angle estimate.
        beta: optical-density threshold of tissue pixels.
        target_he: reference (3, 2) H&E absorbance matrix; MONAI's default when None.
        max_cref: reference maximum stain concentrations (2,); MONAI's default when None.

    Shapes: (3, H, W), values in [0, 255] -> same shape and type, values in [0, 255].
    """

    def __init__(
        self,
        tli: float = 240,
        alpha: float = 1,
        beta: float = 0.15,
        target_he: Optional[Sequence[Sequence[float]]] = None,
        max_cref: Optional[Sequence[float]] = None,
    ):
        kwargs: Dict[str, Any] = {"tli": tli, "alpha": alpha, "beta": beta}
        if target_he is not None:
            kwargs["target_he"] = np.asarray(target_he, dtype=np.float64)
        if max_cref is not None:
            kwargs["max_cref"] = np.asarray(max_cref, dtype=np.float64)
        self.normalizer = NormalizeHEStains(**kwargs)

    def __call__(self, img: Any) -> Any:
        _check_rgb(img, "MacenkoNormalize")
        hwc = np.moveaxis(np.clip(np.asarray(img, dtype=np.float32), 0, 255), 0, -1).astype(np.uint8)
        try:
            out = self.normalizer(hwc)
        except ValueError as err:  # raised by MONAI for tiles without enough stained pixels
            warnings.warn(f"Macenko normalisation skipped for this image: {err}", stacklevel=2)
            return img
        return convert_to_dst_type(np.moveaxis(out, -1, 0).astype(np.float32), img, dtype=torch.float32)[0]


class MacenkoNormalized(MapTransform):
    """Dictionary wrapper of :class:`MacenkoNormalize`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any):
        super().__init__(keys, allow_missing_keys)
        self.normalize = MacenkoNormalize(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


def context_view(image: torch.Tensor, top: int, left: int, size: Sequence[int], scale: int) -> torch.Tensor:
    """The coarse context view of the window at (top, left) of ``size``: the ``scale`` times larger field centred on
    it, edge pixels repeated beyond the image, area-averaged to ``size``.

    Shapes: image (C, H, W) -> (C, size[0], size[1]).
    """
    h, w = int(size[0]), int(size[1])
    mh, mw = (scale - 1) * h // 2, (scale - 1) * w // 2
    y0, x0, y1, x1 = top - mh, left - mw, top + h + mh, left + w + mw
    H, W = image.shape[-2:]
    region = torch.as_tensor(image)[:, max(0, y0) : min(H, y1), max(0, x0) : min(W, x1)].float()
    pad = (max(0, -x0), max(0, x1 - W), max(0, -y0), max(0, y1 - H))
    if any(pad):
        region = torch.nn.functional.pad(region[None], pad, mode="replicate")[0]
    return torch.nn.functional.interpolate(region[None], size=[h, w], mode="area")[0]


class RandContextCropd(Randomizable, MapTransform):
    """Random crops (centred on nuclei with odds ``pos`` : ``neg``, as MONAI's ``RandCropByPosNegLabeld``), whose
    ``image`` also gets its context view (:func:`context_view`) stacked on channels, for DA-RefineNet.

    Args:
        keys: keys cropped alike (image, label, ...).
        label_key: the label whose foreground gives the positive centres.
        spatial_size: crop (height, width).
        context_scale: the context view's field, in window sides.
        pos: weight of crops centred on foreground.
        neg: weight of crops centred on background.
        num_samples: crops per image.
        image_key: the key that gets the context view.

    Shapes: image (C, H, W), H, W >= ``spatial_size`` -> a list of ``num_samples`` dicts, image (2C, h, w), the other
    keys (C_k, h, w).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        spatial_size: Sequence[int],
        context_scale: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        num_samples: int = 1,
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key, self.image_key = label_key, image_key
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.context_scale = int(context_scale)
        self.pos_ratio = pos / (pos + neg)
        self.num_samples = int(num_samples)

    def randomize(self, label: Any) -> list:
        fg, bg = map_binary_to_indices(torch.as_tensor(label)[:1] > 0)
        return generate_pos_neg_label_crop_centers(self.spatial_size, self.num_samples, self.pos_ratio, label.shape[1:], fg, bg, self.R)

    def __call__(self, data: Mapping[Hashable, Any]) -> list:
        d = dict(data)
        h, w = self.spatial_size
        crops = []
        for center in self.randomize(d[self.label_key]):
            top, left = int(center[0]) - h // 2, int(center[1]) - w // 2
            out = dict(d)
            for key in self.key_iterator(d):
                out[key] = d[key][:, top : top + h, left : left + w]
            view = context_view(d[self.image_key], top, left, self.spatial_size, self.context_scale)
            out[self.image_key] = torch.cat([torch.as_tensor(out[self.image_key]).float(), view], dim=0)
            crops.append(out)
        return crops

