"""Checking and reading H&E tiles and their masks with PIL.

The bundle's configs load images with MONAI's stock ``PILReader`` (``converter`` to RGB, natural row/column
order), so what PIL can convert faithfully is what the bundle accepts. :func:`inspect_image` decides that up
front, per file, when a data list is made: 8-bit RGB is used as is; grayscale, grayscale+alpha, RGBA, palette and
1-bit images are converted to RGB with a warning; 16-bit and floating-point images are refused (PIL's RGB
conversion would clip them) with a message saying what to do. An image with an EXIF orientation is turned upright,
as viewers show it; of a multi-page TIFF the largest page is read; both with a warning. Unreadable files raise :class:`ImageReadError`
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
from PIL import Image, ImageOps, UnidentifiedImageError

from bundle.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES", "DEFAULT_MAX_PIXELS", "ImageReadError", "ImageInfo", "TiffLayout", "is_image_file", "tiff_layout",
    "inspect_image", "read_rgb", "read_rgb_checked", "read_mask",
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
_EXIF_ORIENTATION = 0x0112  # 1: upright; 2-8: flipped and / or turned, which viewers undo
_TURNED_ORIENTATIONS = (5, 6, 7, 8)  # orientations whose upright image is transposed (height and width swap)


class ImageReadError(InputError):
    """A file that cannot be used as an image or mask; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` found: size (height, width; upright), PIL mode, the conversion applied (or None),
    the EXIF orientation (1: stored upright) and the number of pages (TIFF)."""

    height: int
    width: int
    mode: str
    conversion: Optional[str]
    orientation: int = 1
    pages: int = 1


def is_image_file(path: PathLike) -> bool:
    """True when the suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class TiffLayout:
    """How the first page of a TIFF stores its pixels, read from its tags by tifffile."""

    dtype: np.dtype
    photometric: str  # RGB, MINISBLACK, YCBCR, ... (an unknown value as its number)
    samples: int  # samples per pixel
    compression: str
    mpp: Optional[float]  # microns per pixel from the resolution tags (unit inch or centimetre), as OpenSlide reads them

    def describe(self) -> str:
        """``"uint16 RGB (3 samples per pixel)"``."""
        return f"{self.dtype} {self.photometric} ({self.samples} sample{'s' if self.samples != 1 else ''} per pixel)"


def tiff_layout(path: PathLike) -> Optional[TiffLayout]:
    """The :class:`TiffLayout` of a ``.tif`` / ``.tiff`` file; None for other files and for TIFFs tifffile cannot parse."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return TiffLayout(
                dtype=np.dtype(page.dtype),
                photometric=getattr(page.photometric, "name", str(page.photometric)),  # an unknown value stays an int
                samples=int(page.samplesperpixel),
                compression=getattr(page.compression, "name", str(page.compression)),
                mpp=_tag_mpp(page.tags),
            )
    except Exception:  # noqa: BLE001 - only a better message; the callers fall back to PIL's or OpenSlide's
        return None


def _tag_mpp(tags: "tifffile.TiffTags") -> Optional[float]:
    """Microns per pixel of XResolution in ResolutionUnit inch or centimetre; None without them."""
    unit, xres = tags.get("ResolutionUnit"), tags.get("XResolution")
    if unit is None or xres is None:
        return None
    num, den = xres.value
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # per inch, per centimetre
    return microns * den / num if microns and num > 0 and den > 0 else None


def _tiff_problem(path: Path) -> Optional[str]:
    """Why PIL cannot open a TIFF and what to do, from its first page's tags; None for other files and for TIFFs
    that tifffile cannot parse either.

    Example: ``"TIFF of float32 RGB (3 samples per pixel) is not supported; convert it to 8-bit RGB first"``; an
    8-bit TIFF in a compression PIL lacks (JPEG 2000, JPEG XL, ...) is told to be saved with one it has.
    """
    layout = tiff_layout(path)
    if layout is None:
        return None
    if layout.dtype == np.uint8 and layout.samples in (1, 3, 4):
        return f"TIFF of {layout.describe()} in {layout.compression} compression cannot be decoded; save it with LZW, deflate or JPEG compression"
    return f"TIFF of {layout.describe()} is not supported; convert it to 8-bit RGB first"


def _deep_colour(im: Image.Image) -> bool:
    """True for an RGB(A) image stored with 16 bits a sample, which PIL opens as 8-bit RGB(A) by keeping the high
    byte: 12-bit data in 16-bit samples would turn near-black. Read from the decoder's raw mode, before decoding."""
    return im.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in im.tile)


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
    if getattr(im, "n_frames", 1) > 1:  # a multi-page TIFF: the largest page (not a thumbnail before it)
        sizes = []
        for page in range(im.n_frames):
            im.seek(page)
            sizes.append(im.width * im.height)
        im.seek(int(np.argmax(sizes)))
    if _deep_colour(im):
        im.close()
        raise ImageReadError(f"{path}: 16-bit {im.mode} image is not supported (8 of its 16 bits would be kept); convert it to 8-bit RGB first")
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


def _orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (1 when it has none or an invalid one)."""
    value = im.getexif().get(_EXIF_ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def _check_mode(path: Path, im: Image.Image, warn: bool) -> ImageInfo:
    """The rules of :func:`inspect_image` applied to an opened image; the size is the upright image's."""
    mode, width, height = im.mode, im.width, im.height
    if mode in _REFUSED_MODES:
        raise ImageReadError(
            f"{path}: {mode} image (16-bit or floating point) is not supported; convert it to 8-bit RGB first"
        )
    notes = [_CONVERTED_MODES[mode]] if mode in _CONVERTED_MODES else []
    if mode != "RGB" and not notes:
        raise ImageReadError(f"{path}: unsupported image mode {mode!r}; expected 8-bit RGB")
    orientation = _orientation(im)
    if orientation != 1:
        notes.append(f"turned upright by its EXIF orientation ({orientation}), as viewers show it")
        if orientation in _TURNED_ORIENTATIONS:
            width, height = height, width
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"page {im.tell() + 1} of {im.n_frames} read (the largest, {im.width} x {im.height}); the others are not segmented")
    conversion = "; ".join(notes) or None
    if conversion and warn:
        warnings.warn(f"{path}: {conversion}", stacklevel=2)
    return ImageInfo(height, width, mode, conversion, orientation, getattr(im, "n_frames", 1))


def read_rgb(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an H&E image as RGB uint8 (H, W, 3), with the checks and conversions of :func:`inspect_image`."""
    return read_rgb_checked(path, max_pixels)[0]


def read_rgb_checked(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, ImageInfo]:
    """:func:`read_rgb` and what :func:`inspect_image` found (size, mode, conversion applied), decoding once."""
    path = Path(path)
    with _open_fully(path, max_pixels) as im:
        info = _check_mode(path, im, warn=False)
        upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        return np.asarray(upright.convert("RGB")), info


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
