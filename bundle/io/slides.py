"""Reading whole-slide images and plain images region by region, at a requested resolution, with tissue detection.

:func:`open_source` opens a file as a :class:`SlideSource` (SVS, NDPI, MRXS, pyramidal or tiled TIFF and other
formats OpenSlide reads, through MONAI's ``WSIReader`` with the OpenSlide backend) or an :class:`ImageSource`
(PNG, JPEG, plain TIFF, held in memory). Both read level-0 regions resampled to the model's microns per pixel,
and a low-resolution thumbnail built chunk by chunk, so memory stays bounded by the chunk size, not the slide.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from bundle.errors import InputError
from bundle.io.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_rgb_checked, tiff_layout

__all__ = [
    "SlideReadError", "SlideSource", "ImageSource", "open_source", "check_mpp", "tissue_mask", "read_region_padded",
    "MPP_RANGE", "SLIDE_SUFFIXES", "IMAGE_SUFFIXES", "INPUT_SUFFIXES",
]
logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu", ".tif", ".tiff")
INPUT_SUFFIXES = tuple(sorted(set(SLIDE_SUFFIXES) | set(IMAGE_SUFFIXES)))  # every input the pipeline accepts
THUMBNAIL_CHUNK = 4096  # level pixels read at once while building a thumbnail
# microns per pixel a microscope scan of nuclei can have (0.25 is 40x, 0.5 20x, 2 a 5x scan, where a nucleus is a
# few pixels); values outside are typing errors or a print resolution in a file's tags (300 dpi is 84.7 um/px)
MPP_RANGE = (0.02, 2.0)


class SlideReadError(InputError):
    """A slide or image cannot be used; the message names the file and the problem."""


def check_mpp(mpp: Optional[float], path: Union[str, os.PathLike, None] = None) -> Optional[float]:
    """``mpp`` as a float when it is a plausible resolution in microns per pixel, or None.

    Raises:
        InputError: zero, negative, not finite or implausible (outside :data:`MPP_RANGE`).
    """
    if mpp is None:
        return None
    where = f"{path}: " if path is not None else ""
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise InputError(f"{where}--mpp must be a number of microns per pixel, got {mpp!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}--mpp must be a positive number of microns per pixel (0.25 for 40x, 0.5 for 20x), got {mpp}")
    if not _plausible(value):
        raise InputError(f"{where}implausible resolution of {value} microns per pixel ({_expected()})")
    return value


def _plausible(mpp: float) -> bool:
    return MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _expected() -> str:
    return f"expected {MPP_RANGE[0]:g}..{MPP_RANGE[1]:g}; 0.25 for 40x, 0.5 for 20x"


def _print_resolution(mpp: float) -> str:
    """``"84.7 um/px = 300 dpi"``: a file's resolution as microns and as dots per inch, for messages."""
    return f"{mpp:.3g} um/px = {25400 / mpp:.0f} dpi"


def _resize(rgb: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) -> (shape[0], shape[1], 3); bilinear when enlarging, box filter when reducing."""
    if rgb.shape[:2] == tuple(shape):
        return rgb
    enlarge = shape[0] * shape[1] > rgb.shape[0] * rgb.shape[1]
    out = Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BILINEAR if enlarge else Image.BOX)
    return np.asarray(out)


class _Source:
    """Common part of slide and image sources: level-0 size and microns per pixel."""

    path: Path
    width: int
    height: int
    mpp: float
    mpp_source: str
    conversion: Optional[str] = None  # conversion applied to the pixels (grayscale -> RGB, ...), or None

    def read_region(self, x: int, y: int, w: int, h: int, out_shape: Tuple[int, int]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _level_for(self, downsample: float) -> Tuple[int, float]:  # pragma: no cover
        raise NotImplementedError

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def thumbnail(self, max_side: int = 2048) -> Tuple[np.ndarray, float]:
        """RGB uint8 thumbnail no larger than ``max_side`` and its downsample from level 0.

        Built from the pyramid level nearest below the thumbnail's resolution, ``THUMBNAIL_CHUNK`` pixels at a
        time, so a single-level 100k x 100k slide costs no more memory than a pyramidal one.
        """
        down = max(self.width, self.height) / max_side if max(self.width, self.height) > max_side else 1.0
        tw, th = max(1, round(self.width / down)), max(1, round(self.height / down))
        level, level_down = self._level_for(down)
        thumb = np.zeros((th, tw, 3), np.uint8)
        step = THUMBNAIL_CHUNK * level_down  # level-0 pixels per chunk
        ys = np.arange(0, self.height, step)
        xs = np.arange(0, self.width, step)
        for y0 in ys:
            for x0 in xs:
                w0, h0 = min(step, self.width - x0), min(step, self.height - y0)
                tx0, ty0 = int(round(x0 / down)), int(round(y0 / down))
                tx1, ty1 = min(tw, int(round((x0 + w0) / down))), min(th, int(round((y0 + h0) / down)))
                if tx1 <= tx0 or ty1 <= ty0:
                    continue
                chunk = self._read_level(level, int(x0), int(y0), int(w0), int(h0))
                thumb[ty0:ty1, tx0:tx1] = _resize(chunk, (ty1 - ty0, tx1 - tx0))
        return thumb, down


class SlideSource(_Source):
    """A whole-slide image read through MONAI's ``WSIReader`` (OpenSlide backend).

    Args:
        path: the slide file.
        mpp: microns per pixel of level 0; overrides the file's value. Required when the file has none.

    Raises:
        SlideReadError: missing, not a slide, unreadable, or without microns per pixel (and none given).
    """

    def __init__(self, path: Union[str, os.PathLike], mpp: Optional[float] = None):
        from monai.data import WSIReader

        self.path = Path(path)
        self.conversion = self._tiff_conversion()
        if self.conversion:
            logger.warning("%s: %s", self.path, self.conversion)
        self.reader = WSIReader(backend="openslide")
        try:
            self.wsi = self.reader.read(str(self.path))
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError, ...
            raise SlideReadError(f"{self.path}: not a whole-slide image OpenSlide can read ({type(e).__name__}: {e})") from e
        self.height, self.width = (int(v) for v in self.reader.get_size(self.wsi, 0))
        self.levels = int(self.reader.get_level_count(self.wsi))
        self.downsamples = [float(self.reader.get_downsample_ratio(self.wsi, lv)) for lv in range(self.levels)]
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "user"
        else:
            try:
                self.mpp = float(self.reader.get_mpp(self.wsi, 0)[0])
            except Exception:  # MONAI raises ValueError or KeyError, OpenSlide returns None for a missing property
                raise SlideReadError(
                    f"{self.path}: the slide has no microns-per-pixel metadata (openslide.mpp-x / TIFF resolution); "
                    "pass its resolution explicitly, e.g. --mpp 0.25 for 40x or --mpp 0.5 for 20x"
                ) from None
            self.mpp_source = "file"
        if not _plausible(self.mpp):
            raise SlideReadError(
                f"{self.path}: the file's resolution ({_print_resolution(self.mpp)}) is not a microscope's ({_expected()}); "
                "pass the slide's resolution with --mpp"
            )

    def _tiff_conversion(self) -> Optional[str]:
        """What reading a tiled TIFF as RGB does to its pixels (None: nothing, or not a ``.tif`` / ``.tiff``).

        Raises:
            SlideReadError: samples that are not 8-bit (OpenSlide would keep the high byte of 16-bit samples, and
                12-bit data in them would turn near-black).
        """
        layout = tiff_layout(self.path)
        if layout is None or (layout.samples == 3 and layout.dtype == np.uint8):
            return None
        if layout.dtype != np.uint8:
            raise SlideReadError(f"{self.path}: TIFF of {layout.describe()} is not supported; convert it to 8-bit RGB first")
        if layout.samples == 1:
            return "grayscale TIFF replicated to RGB"
        if layout.samples == 4:
            return "RGBA TIFF converted to RGB (transparent pixels are read as black: not tissue)"
        return f"TIFF of {layout.describe()} read as RGB"

    def _level_for(self, downsample: float) -> Tuple[int, float]:
        """Deepest level whose downsample does not exceed ``downsample`` (level 0 at least)."""
        level = max((lv for lv, d in enumerate(self.downsamples) if d <= downsample * 1.01), default=0)
        return level, self.downsamples[level]

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (ceil(h / ds), ceil(w / ds), 3) of the level-0 box (x, y, w, h) at ``level``."""
        ds = self.downsamples[level]
        size = (max(1, math.ceil(h / ds)), max(1, math.ceil(w / ds)))
        try:
            data, _ = self.reader.get_data(self.wsi, location=(int(y), int(x)), size=size, level=level, mode="RGB")
        except Exception as e:
            raise SlideReadError(f"{self.path}: cannot read the region x={x} y={y} {w}x{h} at level {level} ({type(e).__name__}: {e}); the file may be truncated or corrupt") from e
        return np.ascontiguousarray(np.moveaxis(np.asarray(data), 0, -1)[..., :3]).astype(np.uint8, copy=False)

    def read_region(self, x: int, y: int, w: int, h: int, out_shape: Tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``out_shape + (3,)`` of the level-0 box (x, y, w, h), read from the best pyramid level."""
        level, _ = self._level_for(min(w / out_shape[1], h / out_shape[0]))
        return _resize(self._read_level(level, x, y, w, h), out_shape)


class ImageSource(_Source):
    """A plain image (PNG, JPEG, non-tiled TIFF) held in memory, converted to RGB as :mod:`bundle.io.images` rules.

    Args:
        path: the image file.
        mpp: microns per pixel; when ``None``, a TIFF's resolution tags if they give a plausible one, else the model's
            resolution ``default_mpp`` with a warning.
        default_mpp: see ``mpp``.
        max_pixels: larger images are refused from their header, before decoding.
    """

    def __init__(
        self, path: Union[str, os.PathLike], mpp: Optional[float] = None, default_mpp: float = 0.25, max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        self.path = Path(path)
        self.rgb, info = read_rgb_checked(self.path, max_pixels)
        self.conversion = info.conversion
        if self.conversion:
            logger.warning("%s: %s", self.path, self.conversion)
        self.height, self.width = self.rgb.shape[:2]
        layout = tiff_layout(self.path) if mpp is None else None
        tagged = layout.mpp if layout is not None else None  # a plain TIFF's resolution tags, as a tiled one's
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "user"
        elif tagged is not None and _plausible(tagged):
            self.mpp, self.mpp_source = tagged, "file"
        else:
            self.mpp, self.mpp_source = float(default_mpp), "assumed"
            tag = f" (its resolution tag, {_print_resolution(tagged)}, is not a microscope's)" if tagged is not None else ""
            logger.warning("%s: no microns per pixel given%s; assuming %.3g um/px (40x). Pass --mpp if it differs.", self.path, tag, default_mpp)

    def _level_for(self, downsample: float) -> Tuple[int, float]:
        return 0, 1.0

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.rgb[y : y + h, x : x + w]

    def read_region(self, x: int, y: int, w: int, h: int, out_shape: Tuple[int, int]) -> np.ndarray:
        return _resize(np.ascontiguousarray(self.rgb[y : y + h, x : x + w]), out_shape)


def open_source(
    path: Union[str, os.PathLike], mpp: Optional[float] = None, default_mpp: float = 0.25, max_pixels: int = DEFAULT_MAX_PIXELS
) -> _Source:
    """Open ``path`` as a slide (formats OpenSlide reads) or a plain image (at most ``max_pixels``).

    Raises:
        SlideReadError: the path does not exist, is not a file, or is neither a readable slide nor image.
        InputError: ``mpp`` is not a plausible resolution.
    """
    p = Path(path)
    mpp = check_mpp(mpp, p)
    if not p.exists():
        raise SlideReadError(f"{p}: no such file")
    if not p.is_file():
        raise SlideReadError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise SlideReadError(f"{p}: the file is empty")
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        import openslide

        try:
            fmt = openslide.OpenSlide.detect_format(str(p))
        except Exception:
            fmt = None
        if fmt is not None:
            return SlideSource(p, mpp)
        if suffix not in IMAGE_SUFFIXES:
            raise SlideReadError(f"{p}: not a whole-slide image OpenSlide can read (format not recognised)")
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(p, mpp, default_mpp, max_pixels)
    raise SlideReadError(f"{p}: unsupported file type {p.suffix!r}; expected a slide ({', '.join(SLIDE_SUFFIXES)}) or an image ({', '.join(IMAGE_SUFFIXES)})")


def read_region_padded(source: "_Source", box: Tuple[int, int, int, int], out_shape: Tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``out_shape + (3,)`` of a level-0 box that may reach beyond the source: the part inside is read
    (resampled to scale) and the edge pixels are repeated over the rest (DA-RefineNet's context around a tile).

    Args:
        source: from :func:`open_source`.
        box: (x0, y0, x1, y1) in level-0 pixels, possibly outside [0, width] x [0, height].
        out_shape: (rows, columns) the whole box is read at.
    """
    x0, y0, x1, y1 = box
    oh, ow = int(out_shape[0]), int(out_shape[1])
    sx, sy = ow / max(1, x1 - x0), oh / max(1, y1 - y0)  # output pixels per level-0 pixel
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(source.width, x1), min(source.height, y1)
    c0, r0 = min(ow - 1, round((cx0 - x0) * sx)), min(oh - 1, round((cy0 - y0) * sy))
    c1, r1 = max(c0 + 1, round((cx1 - x0) * sx)), max(r0 + 1, round((cy1 - y0) * sy))
    inside = source.read_region(cx0, cy0, max(1, cx1 - cx0), max(1, cy1 - cy0), (r1 - r0, c1 - c0))
    return np.pad(inside, ((r0, oh - r1), (c0, ow - c1), (0, 0)), mode="edge")


def _foreground(signal: np.ndarray, floor: float) -> np.ndarray:
    """``signal`` above half its Otsu threshold (and above ``floor``), smoothed over 3 px."""
    signal = ndimage.uniform_filter(signal, 3)
    thr = floor
    if signal.max() - signal.min() > 1e-3:
        thr = max(thr, float(threshold_otsu(signal)) * 0.5)
    return signal > thr


def _touching_border(mask: np.ndarray) -> np.ndarray:
    """The 4-connected regions of a bool (H, W) ``mask`` that reach the image border (bool, same shape)."""
    labels, _ = ndimage.label(mask)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def tissue_mask(
    thumb: np.ndarray, min_saturation: float = 0.05, min_darkness: float = 0.1, min_size: int = 16, min_brightness: float = 0.1
) -> np.ndarray:
    """Tissue (bool, same H x W) of an RGB thumbnail.

    H&E tissue is coloured, glass and background are grey or white: tissue is where the saturation is above Otsu's
    threshold (and ``min_saturation``). A grey image (a grayscale input converted to RGB, whose saturation is 0
    everywhere) is judged by darkness instead (1 - intensity above Otsu's threshold and ``min_darkness``). Near-black
    pixels (a scanner's black filler, slide edges, a black image) are not tissue: in colour, none is (their
    saturation is noise); in grayscale, where dense nuclei can be as dark, those connected to the border. A blank or
    black slide gives an empty mask.

    Args:
        thumb: RGB uint8 (H, W, 3).
        min_saturation: lowest saturation of colour tissue, in [0, 1].
        min_darkness: lowest darkness (1 - mean intensity) of grayscale tissue, in [0, 1].
        min_size: tissue regions smaller than this many pixels are dropped.
        min_brightness: pixels whose brightest channel is below this, in [0, 1], are near-black.
    """
    rgb = thumb.astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    lit = mx >= min_brightness
    sat = np.where(lit, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    if float(sat.max()) < min_saturation:  # no colour anywhere: a grayscale image, where nuclei can be near-black too
        frame = _touching_border(~lit)
        mask = _foreground(np.where(frame, 0.0, 1.0 - rgb.mean(axis=-1)), min_darkness) & ~frame
    else:
        mask = _foreground(sat, min_saturation) & lit
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = True
        mask = ~small[labels]
    return mask
