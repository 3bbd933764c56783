"""Reading H&E tiles and their masks: PIL for PNG/JPEG/TIFF, tifffile for TIFFs PIL cannot decode.

Images always come back as RGB uint8 (H, W, 3); grayscale, RGBA, palette and 16-bit images are converted with a
warning that names the file. Masks come back as (H, W) integer arrays. Unreadable files raise
:class:`ImageReadError` naming the file and the problem. :class:`HistologyImageReader` plugs the same rules into
MONAI's ``LoadImage`` / ``LoadImaged``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "is_image_file",
    "read_rgb",
    "read_mask",
    "HistologyImageReader",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """A file that cannot be used as an image or mask; the message names the file and the problem."""


def is_image_file(path: PathLike) -> bool:
    """True when the suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _decode(path: Path) -> np.ndarray:
    """Decode a file into a numpy array, raising :class:`ImageReadError` with the file name on failure."""
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_array(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as pil_error:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                return np.asarray(tifffile.imread(path))
            except Exception as tiff_error:  # tifffile raises many types on broken files
                raise ImageReadError(f"{path}: not a readable TIFF image ({tiff_error})") from tiff_error
        raise ImageReadError(f"{path}: not a readable image ({pil_error})") from pil_error


def _pil_to_array(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    return np.asarray(im)


def _to_rgb8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Convert a decoded array to RGB uint8 (H, W, 3), warning about every conversion made."""
    notes: List[str] = []
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise ImageReadError(f"{path}: expected an RGB image (H, W, 3), got an array of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.floating):
            raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
            notes.append("floating-point pixels scaled to 8 bits")
        else:
            bits = np.iinfo(arr.dtype).bits
            arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255.0 + 0.5).astype(np.uint8)
            notes.append(f"{bits}-bit pixels scaled to 8 bits")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
        notes.append("grayscale replicated to RGB")
    elif arr.shape[-1] == 2:  # grayscale + alpha
        arr = np.repeat(arr[..., :1], 3, axis=-1)
        notes.append("grayscale+alpha converted to RGB")
    elif arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        if alpha.min() < 1.0:
            rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)  # composite on white
            arr = (rgb + 0.5).astype(np.uint8)
            notes.append("RGBA composited on white")
        else:
            arr = arr[..., :3]
            notes.append("opaque alpha channel dropped")
    if notes:
        warnings.warn(f"{path}: {', '.join(notes)}", stacklevel=3)
    return np.ascontiguousarray(arr)


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an H&E image as RGB uint8.

    Args:
        path: PNG, JPEG or TIFF file.

    Returns:
        uint8 array (H, W, 3).

    Raises:
        ImageReadError: missing, corrupt or non-image file, or an array that is not an image.
    """
    path = Path(path)
    return _to_rgb8(_decode(path), path)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a mask: instance labels (uint16, 0 background) or binary (0/255, or 0/1).

    Returns:
        integer array (H, W); RGB masks are reduced to their first channel with a warning.

    Raises:
        ImageReadError: missing, corrupt or non-image file, or a mask that is not 2-D.
    """
    path = Path(path)
    arr = _decode(path)
    if arr.ndim == 3:
        if arr.shape[-1] not in (3, 4) or not (arr[..., 0] == arr[..., 1]).all():
            raise ImageReadError(f"{path}: a mask must be single-channel, got shape {arr.shape}")
        warnings.warn(f"{path}: RGB mask reduced to its first channel", stacklevel=2)
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: a mask must be 2-D (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise ImageReadError(f"{path}: a mask must hold integer labels, got {arr.dtype}")
    return arr.astype(np.int32 if arr.dtype == np.uint16 or arr.dtype.itemsize > 2 else np.uint8)


class HistologyImageReader(ImageReader):
    """MONAI image reader for H&E tiles and masks, for ``LoadImage(d)(reader=HistologyImageReader(...))``.

    Gives channel-last arrays in natural (row, column) order: images (H, W, 3) uint8 through :func:`read_rgb`,
    masks (H, W) through :func:`read_mask`. ``EnsureChannelFirst(d)`` then gives (3, H, W) and (1, H, W).

    Args:
        mask: read masks instead of RGB images.
    """

    def __init__(self, mask: bool = False, **kwargs: Any):
        super().__init__()
        self.mask = mask

    def verify_suffix(self, filename: Union[Sequence[PathLike], PathLike]) -> bool:
        return all(is_image_file(f) for f in ensure_tuple(filename))

    def read(self, data: Union[Sequence[PathLike], PathLike], **kwargs: Any) -> List[Tuple[np.ndarray, str]]:
        reader = read_mask if self.mask else read_rgb
        return [(reader(f), str(f)) for f in ensure_tuple(data)]

    def get_data(self, img: Any) -> Tuple[np.ndarray, Dict]:
        items = img if isinstance(img, list) else [img]
        arrays = [a for a, _ in items]
        if len(arrays) > 1:
            raise ValueError("HistologyImageReader reads one file at a time")
        arr, name = items[0]
        meta: Dict[str, Any] = {
            "spatial_shape": np.asarray(arr.shape[:2]),
            "original_channel_dim": "no_channel" if arr.ndim == 2 else -1,
            "filename_or_obj": name,
            "affine": np.eye(3),
            "original_affine": np.eye(3),
        }
        return arr, meta
