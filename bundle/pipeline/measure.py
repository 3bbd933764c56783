"""Per-nucleus measurements and polygons from an instance label map (the pipeline's measure stage).

Measurements are taken on the map the model produced (model resolution) and reported in physical units
(um, um^2) and in level-0 pixels of the source image or slide, so that polygons drawn by QuPath, DSA or ASAP
land on the nuclei.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import shapely
from scipy.ndimage import find_objects
from skimage.color import hed_from_rgb
from skimage.measure import find_contours

__all__ = ["Nucleus", "measure_nuclei", "haematoxylin", "density_per_mm2"]

HAEMATOXYLIN_FROM_RGB = hed_from_rgb[:, 0].astype(np.float32)  # optical densities (R, G, B) -> haematoxylin


@dataclass
class Nucleus:
    """One nucleus: its outline in level-0 pixels and its measurements.

    Attributes:
        polygon: (K, 2) float32 vertices (x, y) in level-0 pixels, closed implicitly (first != last).
        centroid: (x, y) in level-0 pixels.
        area_um2: area in square microns.
        area_px: area in level-0 pixels.
        perimeter_um: perimeter in microns.
        eccentricity: of the ellipse with the same second moments, in [0, 1).
        solidity: area over convex-hull area, in (0, 1].
        mean_haematoxylin: mean haematoxylin optical density (colour deconvolution, Ruifrok & Johnston).
        id: 1-based number in the output, set by the writer.
    """

    polygon: np.ndarray
    centroid: Tuple[float, float]
    area_um2: float
    area_px: float
    perimeter_um: float
    eccentricity: float
    solidity: float
    mean_haematoxylin: float
    id: int = 0


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (H, W) float32 of an RGB uint8 image (H, W, 3) by colour deconvolution: the
    first channel of scikit-image's ``rgb2hed`` (Ruifrok and Johnston), computed alone and in float32."""
    density = np.log(np.maximum(rgb.astype(np.float32) / np.float32(255.0), np.float32(1e-6))) / np.float32(np.log(1e-6))
    return np.maximum(density @ HAEMATOXYLIN_FROM_RGB, np.float32(0.0))


def _outline(mask: np.ndarray) -> Optional[np.ndarray]:
    """Longest marching-squares contour (K, 2) as (row, col) of a bool mask, open ring; ``None`` when degenerate."""
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0
    contour = contour[:-1] if np.allclose(contour[0], contour[-1]) else contour
    return contour if len(contour) >= 3 else None


def _label_moments(labels: np.ndarray, values: np.ndarray, count: int) -> Dict[str, np.ndarray]:
    """Per-label pixel count, centroid, central second moments and mean of ``values``: arrays of ``count + 1``
    (index = label), from one pass of ``np.bincount`` each."""
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    flat = labels.ravel()

    def total(weights: Optional[np.ndarray] = None) -> np.ndarray:
        return np.bincount(flat, None if weights is None else weights.ravel(), minlength=count + 1)

    area = total()
    n = np.maximum(area, 1.0)
    cy, cx = total(rows) / n, total(cols) / n
    return {
        "area": area,
        "cy": cy,
        "cx": cx,
        "mu_rr": total(rows * rows) / n - cy * cy,
        "mu_cc": total(cols * cols) / n - cx * cx,
        "mu_rc": total(rows * cols) / n - cy * cx,
        "mean": total(values.astype(np.float64)) / n,
    }


def _eccentricity(mu_rr: np.ndarray, mu_cc: np.ndarray, mu_rc: np.ndarray) -> np.ndarray:
    """Eccentricity of the ellipse with the given central second moments (as skimage's regionprops)."""
    half_trace, root = (mu_rr + mu_cc) / 2, np.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    major, minor = half_trace + root, np.maximum(half_trace - root, 0.0)
    return np.sqrt(1.0 - np.divide(minor, major, out=np.ones_like(major), where=major > 0))


def measure_nuclei(
    labels: np.ndarray,
    rgb: np.ndarray,
    model_mpp: float,
    level0_mpp: float,
    origin: Tuple[float, float] = (0.0, 0.0),
    keep: Optional[Tuple[float, float, float, float]] = None,
    tolerance: float = 0.5,
    pixel_size: Optional[Tuple[float, float]] = None,
) -> List[Nucleus]:
    """Nuclei of an instance map, with outlines mapped to level-0 pixels.

    Area, centroid, eccentricity and mean haematoxylin come from the pixels of each label (all labels at once);
    the outline is the label's marching-squares contour, whose length is the perimeter and whose convex hull
    gives the solidity (outline area over hull area); the polygon written out is that contour simplified
    (Douglas-Peucker, shapely).

    Args:
        labels: int (H, W) instance map at model resolution, 0 background.
        rgb: uint8 (H, W, 3) the image the map was computed on (for the haematoxylin intensity).
        model_mpp: microns per pixel of ``labels``.
        level0_mpp: microns per pixel of the source's level 0.
        origin: level-0 (x, y) of ``labels[0, 0]``'s corner.
        keep: (row0, col0, row1, col1) in ``labels`` pixels: only nuclei whose centroid lies in this window are
            returned (tile ownership, so that nuclei in tile overlaps are reported once); ``None``: all.
        tolerance: polygon simplification in model pixels.
        pixel_size: level-0 pixels per ``labels`` pixel along x and y, as the map was read (a tile resampled to a
            whole number of pixels); ``None``: ``model_mpp / level0_mpp`` along both.

    Returns:
        The nuclei, in label order.
    """
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and rgb {rgb.shape} differ in size")
    labels = np.asarray(labels, dtype=np.int64)
    count = int(labels.max(initial=0))
    if count == 0:
        return []
    moments = _label_moments(labels, haematoxylin(rgb), count)
    ids, outlines = [], []
    for index, box in enumerate(find_objects(labels), start=1):
        if box is None:
            continue
        cy, cx = moments["cy"][index], moments["cx"][index]
        if keep is not None and not (keep[0] <= cy < keep[2] and keep[1] <= cx < keep[3]):
            continue
        outline = _outline(labels[box] == index)
        if outline is None:
            continue
        ids.append(index)
        outlines.append(outline + (box[0].start, box[1].start))
    if not ids:
        return []
    rings = np.array([shapely.Polygon(np.stack([o[:, 1] + 0.5, o[:, 0] + 0.5], axis=1)) for o in outlines], dtype=object)
    perimeter = shapely.length(rings)
    hull_area = shapely.area(shapely.convex_hull(rings))
    solidity = np.divide(shapely.area(rings), hull_area, out=np.ones_like(hull_area), where=hull_area > 0)
    simplified = shapely.simplify(rings, tolerance, preserve_topology=True)
    index = np.asarray(ids)
    eccentricity = _eccentricity(moments["mu_rr"][index], moments["mu_cc"][index], moments["mu_rc"][index])
    scale = np.asarray(pixel_size if pixel_size is not None else (model_mpp / level0_mpp,) * 2, dtype=np.float64)  # (x, y)
    nuclei: List[Nucleus] = []
    for k, label in enumerate(ids):
        xy = shapely.get_coordinates(shapely.get_exterior_ring(simplified[k]))[:-1]
        if len(xy) < 3:  # simplified away: keep the full contour
            xy = shapely.get_coordinates(shapely.get_exterior_ring(rings[k]))[:-1]
        area_um2 = float(moments["area"][label]) * model_mpp**2
        nuclei.append(
            Nucleus(
                polygon=(xy * scale + np.asarray(origin, dtype=np.float64)).astype(np.float32),
                centroid=(origin[0] + (moments["cx"][label] + 0.5) * scale[0], origin[1] + (moments["cy"][label] + 0.5) * scale[1]),
                area_um2=area_um2,
                area_px=area_um2 / level0_mpp**2,
                perimeter_um=float(perimeter[k]) * model_mpp,
                eccentricity=float(eccentricity[k]),
                solidity=float(min(solidity[k], 1.0)),
                mean_haematoxylin=float(moments["mean"][label]),
            )
        )
    return nuclei


def density_per_mm2(count: int, area_um2: float) -> float:
    """Nuclei per square millimetre of ``area_um2`` (NaN for zero area)."""
    return count / (area_um2 * 1e-6) if area_um2 > 0 else math.nan
