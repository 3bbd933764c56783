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
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils.type_conversion import convert_to_dst_type

__all__ = ["RGB_FROM_HED", "RandHEDJitter", "RandHEDJitterd", "MacenkoNormalize", "MacenkoNormalized"]

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

    Shapes: (3, H, W) float in [0, 1] -> same shape and type, values in [0, 1].
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
        _check_rgb(img, "RandHEDJitter")
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = torch.as_tensor(img, dtype=torch.float32)
        flat = x.reshape(3, -1).clamp(min=1e-6)  # (3, N)
        hed = ((torch.log(flat) / _LOG_EPS).T @ torch.from_numpy(HED_FROM_RGB)).clamp(min=0)  # (N, 3)
        hed = hed * torch.from_numpy(self._alpha) + torch.from_numpy(self._beta)
        rgb = torch.exp((hed * _LOG_EPS) @ torch.from_numpy(RGB_FROM_HED)).clamp(0, 1)  # (N, 3)
        out = rgb.T.reshape(x.shape)
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
