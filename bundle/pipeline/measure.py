"""Per-nucleus measurements and polygons from an instance label map (the pipeline's measure stage).

Measurements are taken on the map the model produced (model resolution) and reported in physical units
(um, um^2) and in level-0 pixels of the source image or slide, so that polygons drawn by QuPath, DSA or ASAP
land on the nuclei.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from skimage.color import rgb2hed
from skimage.measure import approximate_polygon, find_contours, regionprops

__all__ = ["Nucleus", "measure_nuclei", "haematoxylin", "density_per_mm2"]


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
    """Haematoxylin optical density (H, W) float32 of an RGB uint8 image (H, W, 3) by colour deconvolution."""
    return rgb2hed(rgb)[..., 0].astype(np.float32)


def _outline(mask: np.ndarray, tolerance: float) -> Optional[np.ndarray]:
    """Longest contour (K, 2) as (row, col) of a bool mask, simplified; ``None`` when degenerate."""
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0
    contour = approximate_polygon(contour, tolerance)
    if len(contour) < 4:  # closed ring of at least three distinct vertices
        return None
    return contour[:-1] if np.allclose(contour[0], contour[-1]) else contour


def measure_nuclei(
    labels: np.ndarray,
    rgb: np.ndarray,
    model_mpp: float,
    level0_mpp: float,
    origin: Tuple[float, float] = (0.0, 0.0),
    keep: Optional[Tuple[int, int, int, int]] = None,
    tolerance: float = 0.5,
) -> List[Nucleus]:
    """Nuclei of an instance map, with outlines mapped to level-0 pixels.

    Args:
        labels: int (H, W) instance map at model resolution, 0 background.
        rgb: uint8 (H, W, 3) the image the map was computed on (for the haematoxylin intensity).
        model_mpp: microns per pixel of ``labels``.
        level0_mpp: microns per pixel of the source's level 0.
        origin: level-0 (x, y) of ``labels[0, 0]``'s corner.
        keep: (row0, col0, row1, col1) in ``labels`` pixels: only nuclei whose centroid lies in this window are
            returned (tile ownership, so that nuclei in tile overlaps are reported once); ``None``: all.
        tolerance: polygon simplification in model pixels.

    Returns:
        The nuclei, in label order.
    """
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and rgb {rgb.shape} differ in size")
    scale = model_mpp / level0_mpp  # level-0 pixels per model pixel
    hema = haematoxylin(rgb)
    nuclei: List[Nucleus] = []
    for region in regionprops(labels.astype(np.int32), intensity_image=hema):
        cy, cx = region.centroid
        if keep is not None and not (keep[0] <= cy < keep[2] and keep[1] <= cx < keep[3]):
            continue
        r0, c0, _, _ = region.bbox
        outline = _outline(region.image, tolerance)
        if outline is None:
            continue
        xy = np.stack([outline[:, 1] + c0 + 0.5, outline[:, 0] + r0 + 0.5], axis=1) * scale
        xy += np.asarray(origin, dtype=np.float64)
        area_um2 = float(region.area) * model_mpp**2
        nuclei.append(
            Nucleus(
                polygon=xy.astype(np.float32),
                centroid=(origin[0] + (cx + 0.5) * scale, origin[1] + (cy + 0.5) * scale),
                area_um2=area_um2,
                area_px=area_um2 / level0_mpp**2,
                perimeter_um=float(region.perimeter) * model_mpp,
                eccentricity=float(region.eccentricity),
                solidity=float(region.solidity),
                mean_haematoxylin=float(region.intensity_mean),
            )
        )
    return nuclei


def density_per_mm2(count: int, area_um2: float) -> float:
    """Nuclei per square millimetre of ``area_um2`` (NaN for zero area)."""
    return count / (area_um2 * 1e-6) if area_um2 > 0 else math.nan
