"""Checking and reading H&E tiles and their masks with PIL.

The bundle's configs load images with MONAI's stock ``PILReader`` (``converter`` to RGB, natural row/column
order), so what PIL can convert faithfully is what the bundle accepts. :func:`inspect_image` decides that up
front, per file, when a data list is made: 8-bit RGB is used as is; grayscale, grayscale+alpha, RGBA, palette and
1-bit images are converted to RGB with a warning; 16-bit and floating-point images are refused (PIL's RGB
conversion would clip them) with a message saying what to do. Unreadable files raise :class:`ImageReadError`
naming the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from bundle.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES", "DEFAULT_MAX_PIXELS", "ImageReadError", "ImageInfo", "is_image_file", "inspect_image", "read_rgb",
    "read_rgb_checked", "read_mask",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
DEFAULT_MAX_PIXELS = 64_000_000  # plain images above this are refused from their header (memory: 3 bytes a pixel)
PathLike = Union[str, os.PathLike]
_CONVERTED_MODES = {
    "L": "grayscale image replicated to RGB",
    "LA": "grayscale+alpha image converted to RGB (alpha dropped)",
    "RGBA": "RGBA image converted to RGB (alpha dropped)",
    "RGBX": "RGBX image converted to RGB",
    "P": "palette image converted to RGB",
    "1": "1-bit image converted to RGB",
    "CMYK": "CMYK image converted to RGB",
    "YCbCr": "YCbCr image converted to RGB",
}
_REFUSED_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageReadError(InputError):
    """A file that cannot be used as an image or mask; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` found: size (height, width), PIL mode, and the conversion applied (or None)."""

    height: int
    width: int
    mode: str
    conversion: Optional[str]


def is_image_file(path: PathLike) -> bool:
    """True when the suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _tiff_problem(path: Path) -> Optional[str]:
    """Why PIL cannot open a TIFF and what to do, from its first page's tags (read by tifffile); None for other files
    and for TIFFs that tifffile cannot parse either.

    Example: ``"TIFF of float32 RGB (3 samples per pixel) is not supported; convert it to 8-bit RGB first"``; an
    8-bit TIFF in a compression PIL lacks (JPEG 2000, JPEG XL, ...) is told to be saved with one it has.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            samples = page.samplesperpixel
            photometric = getattr(page.photometric, "name", str(page.photometric))  # an unknown value stays an int
            compression = getattr(page.compression, "name", str(page.compression))
            layout = f"{page.dtype} {photometric} ({samples} sample{'s' if samples != 1 else ''} per pixel)"
            if page.dtype == np.uint8 and samples in (1, 3, 4):
                return (f"TIFF of {layout} in {compression} compression cannot be decoded; "
                        "save it with LZW, deflate or JPEG compression")
            return f"TIFF of {layout} is not supported; convert it to 8-bit RGB first"
    except Exception:  # noqa: BLE001 - only a better message; the caller falls back to PIL's
        return None


def _open_fully(path: Path, max_pixels: Optional[int] = None) -> Image.Image:
    """Open and decode ``path``; its size is checked against ``max_pixels`` from the header, before decoding."""
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice PIL's MAX_IMAGE_PIXELS: refused before decoding
        raise ImageReadError(f"{path}: image too large to decode in memory ({err}); convert it to a tiled pyramidal TIFF") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        problem = _tiff_problem(path)
        if problem is not None:
            raise ImageReadError(f"{path}: {problem}") from err
        raise ImageReadError(f"{path}: not a readable image ({err})") from err
    if max_pixels is not None and im.width * im.height > max_pixels:
        im.close()
        raise ImageReadError(
            f"{path}: {im.width} x {im.height} image is over the limit of {max_pixels / 1e6:g} megapixels for plain images "
            "(max_image_megapixels); convert it to a tiled pyramidal TIFF, which is read tile by tile"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked above
            im.load()  # decode everything now, so that truncated files fail here and not mid-run
        return im
    except (OSError, SyntaxError, ValueError, MemoryError) as err:
        im.close()
        problem = _tiff_problem(path) if isinstance(err, OSError) and "decoder" in str(err) else None  # a codec PIL lacks
        raise ImageReadError(f"{path}: {problem or f'not a readable image ({type(err).__name__}: {err})'}") from err


def inspect_image(path: PathLike, warn: bool = True, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check that ``path`` is an H&E image the bundle can use.

    Args:
        path: PNG, JPEG or TIFF file.
        warn: issue a ``UserWarning`` naming the file when the image will be converted to RGB.
        max_pixels: larger images are refused from their header, before decoding (None: no limit).

    Raises:
        ImageReadError: missing, corrupt or non-image file; too large; 16-bit or floating-point image; unsupported mode.
    """
    path = Path(path)
    with _open_fully(path, max_pixels) as im:
        return _check_mode(path, im, warn)


def _check_mode(path: Path, im: Image.Image, warn: bool) -> ImageInfo:
    """The rules of :func:`inspect_image` applied to an opened image."""
    mode, width, height = im.mode, im.width, im.height
    if mode in _REFUSED_MODES:
        raise ImageReadError(
            f"{path}: {mode} image (16-bit or floating point) is not supported; convert it to 8-bit RGB first"
        )
    conversion = _CONVERTED_MODES.get(mode)
    if mode != "RGB" and conversion is None:
        raise ImageReadError(f"{path}: unsupported image mode {mode!r}; expected 8-bit RGB")
    if conversion and warn:
        warnings.warn(f"{path}: {conversion}", stacklevel=2)
    return ImageInfo(height, width, mode, conversion)


def read_rgb(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an H&E image as RGB uint8 (H, W, 3), with the checks and conversions of :func:`inspect_image`."""
    return read_rgb_checked(path, max_pixels)[0]


def read_rgb_checked(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, ImageInfo]:
    """:func:`read_rgb` and what :func:`inspect_image` found (size, mode, conversion applied), decoding once."""
    path = Path(path)
    with _open_fully(path, max_pixels) as im:
        info = _check_mode(path, im, warn=False)
        return np.asarray(im.convert("RGB")), info


def read_mask(path: PathLike) -> np.ndarray:
    """Read a mask as an integer array (H, W): instance labels (uint16, 0 background) or binary (0/255 or 0/1).

    Raises:
        ImageReadError: missing, corrupt or non-image file, or a mask that is not single-channel.
    """
    path = Path(path)
    with _open_fully(path, DEFAULT_MAX_PIXELS) as im:
        if im.mode == "1":
            im = im.convert("L")
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: a mask must be single-channel (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ImageReadError(f"{path}: a mask must hold integer labels, got {arr.dtype}")
    return arr
