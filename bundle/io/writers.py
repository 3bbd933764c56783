"""The pipeline's write stage: the files a pathologist opens, one set per input, the same for images and slides.

For an input named ``<name>`` (its stem, or ``<stem>_<suffix>`` when two inputs of a batch share a stem), the
segmenter writes into ``<output_dir>/<name>/``:

- ``<name>_instances.tif``: uint32 instance labels at level-0 size (0 background, nucleus ids 1..N as in the
  CSV and GeoJSON), tiled and zlib-compressed, with the resolution in the TIFF tags (:func:`write_instances`);
- ``<name>_seg.png``: the binary mask, uint8 0 / 255, level-0 size, for inputs of at most ``max_pixels``
  (:func:`write_mask_png`);
- ``<name>.geojson``: QuPath detections (polygons in level-0 pixels) with measurements (:func:`write_geojson`);
- ``<name>_nuclei.csv``: one row per nucleus, columns :data:`CSV_COLUMNS` (:func:`write_csv`);
- ``<name>_overlay.png``: the input (at most ``OVERLAY_SIDE`` pixels a side) with every nucleus outlined in green
  and the detected tissue in blue (:func:`write_overlay`);
- ``<name>_summary.json``: count, density, resolution, time, memory, files (written by the segmenter).

Every writer streams or works tile by tile where the input can be large: memory stays bounded by a tile.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tifffile
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.segmentation import find_boundaries

from bundle.pipeline.measure import Nucleus

__all__ = [
    "CSV_COLUMNS", "LABEL_TILE", "OVERLAY_SIDE", "nucleus_row", "nucleus_feature", "write_instances", "write_mask_png",
    "write_geojson", "write_csv", "write_overlay",
]
PathLike = Union[str, os.PathLike]

CSV_COLUMNS = (
    "id",
    "centroid_x",
    "centroid_y",
    "area_um2",
    "area_px",
    "perimeter_um",
    "eccentricity",
    "solidity",
    "mean_haematoxylin",
)
QUPATH_COLOUR = [0, 200, 0]
LABEL_TILE = 512  # tile side of the instance TIFF, and of the rasterisation
OVERLAY_SIDE = 2048  # the overlay's longer side at most, in pixels
NUCLEUS_OUTLINE = (0, 220, 0)
TISSUE_OUTLINE = (0, 90, 255)


def nucleus_row(nucleus: Nucleus) -> Dict[str, Any]:
    """The CSV row (:data:`CSV_COLUMNS`) of a nucleus."""
    return {
        "id": nucleus.id,
        "centroid_x": round(nucleus.centroid[0], 2),
        "centroid_y": round(nucleus.centroid[1], 2),
        "area_um2": round(nucleus.area_um2, 3),
        "area_px": round(nucleus.area_px, 1),
        "perimeter_um": round(nucleus.perimeter_um, 3),
        "eccentricity": round(nucleus.eccentricity, 4),
        "solidity": round(nucleus.solidity, 4),
        "mean_haematoxylin": round(nucleus.mean_haematoxylin, 5),
    }


def nucleus_feature(nucleus: Nucleus) -> Dict[str, Any]:
    """QuPath-compatible GeoJSON Feature: a detection Polygon (level-0 pixels) with measurements as properties."""
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in nucleus.polygon]
    ring.append(ring[0])
    row = nucleus_row(nucleus)
    measurements = {k: v for k, v in row.items() if k not in ("id", "centroid_x", "centroid_y")}
    return {
        "type": "Feature",
        "id": f"nucleus-{nucleus.id}",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "detection",
            "name": f"nucleus {nucleus.id}",
            "classification": {"name": "Nucleus", "color": QUPATH_COLOUR},
            "isLocked": False,
            "measurements": measurements,
        },
    }


def write_geojson(path: PathLike, nuclei: Sequence[Nucleus]) -> Path:
    """QuPath-compatible FeatureCollection of the nuclei (detections, level-0 pixels), streamed feature by feature."""
    path = Path(path)
    with open(path, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for k, n in enumerate(nuclei):
            f.write(("," if k else "") + "\n" + json.dumps(nucleus_feature(n)))
        f.write("\n]}\n")
    return path


def write_csv(path: PathLike, nuclei: Sequence[Nucleus]) -> Path:
    """One row per nucleus, columns :data:`CSV_COLUMNS`."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(nucleus_row(n) for n in nuclei)
    return path


def _tile_index(nuclei: Sequence[Nucleus], width: int, height: int) -> Dict[Tuple[int, int], List[int]]:
    """For each ``LABEL_TILE`` tile (row, col) of a ``width`` x ``height`` plane, the nuclei whose box meets it."""
    index: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for k, n in enumerate(nuclei):
        (x0, y0), (x1, y1) = n.polygon.min(0), n.polygon.max(0)
        for ty in range(max(0, int(y0) // LABEL_TILE), min(height - 1, int(y1)) // LABEL_TILE + 1):
            for tx in range(max(0, int(x0) // LABEL_TILE), min(width - 1, int(x1)) // LABEL_TILE + 1):
                index[(ty, tx)].append(k)
    return index


def _label_tiles(nuclei: Sequence[Nucleus], width: int, height: int) -> Iterator[np.ndarray]:
    """uint32 (LABEL_TILE, LABEL_TILE) tiles of the rasterised nuclei (value: ``Nucleus.id``), row-major."""
    index = _tile_index(nuclei, width, height)
    for ty in range(math.ceil(height / LABEL_TILE)):
        for tx in range(math.ceil(width / LABEL_TILE)):
            tile = np.zeros((LABEL_TILE, LABEL_TILE), np.uint32)
            for k in index.get((ty, tx), ()):
                poly = nuclei[k].polygon
                rr, cc = fill_polygon(poly[:, 1] - ty * LABEL_TILE - 0.5, poly[:, 0] - tx * LABEL_TILE - 0.5, tile.shape)
                tile[rr, cc] = nuclei[k].id
            yield tile


def write_instances(
    path: PathLike, nuclei: Sequence[Nucleus], width: int, height: int, mpp: float, mask: Optional[np.ndarray] = None
) -> Path:
    """uint32 label TIFF (tiled, zlib) of ``width`` x ``height`` level-0 pixels at ``mpp`` microns per pixel,
    rasterised tile by tile from the nucleus polygons: memory ~ one tile.

    Args:
        mask: a uint8 (height, width) array that is set to 255 inside the nuclei from the same tiles (the binary
            mask of :func:`write_mask_png` without rasterising the polygons a second time); None: none.
    """
    res = 1e4 / mpp  # pixels per centimetre
    tiles = _label_tiles(nuclei, width, height)
    if mask is not None:
        tiles = _filling(tiles, mask, width, height)
    tifffile.imwrite(
        path, tiles, shape=(height, width), dtype=np.uint32, tile=(LABEL_TILE, LABEL_TILE),
        compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
    )
    return Path(path)


def _filling(tiles: Iterator[np.ndarray], mask: np.ndarray, width: int, height: int) -> Iterator[np.ndarray]:
    """The label tiles, unchanged, each also written into ``mask`` (255 inside a nucleus) as it passes."""
    for tile, (ty, tx) in zip(tiles, _tile_origins(width, height)):
        h, w = min(LABEL_TILE, height - ty), min(LABEL_TILE, width - tx)
        mask[ty : ty + h, tx : tx + w] = np.where(tile[:h, :w] > 0, 255, 0)
        yield tile


def write_mask_png(path: PathLike, mask: np.ndarray) -> Path:
    """Binary mask PNG, uint8 (height, width): 255 inside a nucleus, 0 elsewhere, as filled by
    :func:`write_instances` (memory: one byte a pixel)."""
    Image.fromarray(mask).save(path, compress_level=1)
    return Path(path)


def _tile_origins(width: int, height: int) -> Iterator[Tuple[int, int]]:
    for ty in range(0, height, LABEL_TILE):
        for tx in range(0, width, LABEL_TILE):
            yield ty, tx


def write_overlay(path: PathLike, thumb: np.ndarray, down: float, tissue: np.ndarray, nuclei: Sequence[Nucleus]) -> Path:
    """The thumbnail (h, w, 3) of the input (``down`` level-0 pixels per thumbnail pixel) with the outline of each
    nucleus in green (touching nuclei keep their own outlines; nuclei of 1-2 px are filled) and the tissue (h, w)
    outlined in blue."""
    canvas = thumb.copy()
    canvas[find_boundaries(tissue, mode="inner")] = TISSUE_OUTLINE
    labels = np.zeros(canvas.shape[:2], np.int32)
    for k, n in enumerate(nuclei, start=1):
        poly = n.polygon / down
        rr, cc = fill_polygon(poly[:, 1] - 0.5, poly[:, 0] - 0.5, labels.shape)
        if rr.size == 0:  # smaller than a thumbnail pixel: its centre
            rr, cc = np.clip([int(n.centroid[1] / down)], 0, labels.shape[0] - 1), np.clip([int(n.centroid[0] / down)], 0, labels.shape[1] - 1)
        labels[rr, cc] = k
    canvas[find_boundaries(labels, mode="inner")] = NUCLEUS_OUTLINE
    Image.fromarray(canvas).save(path, compress_level=1)
    return Path(path)
