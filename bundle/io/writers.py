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
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import tifffile
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.segmentation import find_boundaries

from bundle.pipeline.measure import Nucleus
from bundle.pipeline.nucleus_table import NucleusTable

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


def _outline_boxes(nuclei: Sequence[Nucleus]) -> np.ndarray:
    """(N, 4) float32 boxes (x0, y0, x1, y1) of the outlines, level-0 pixels; a table's are read from its file."""
    if isinstance(nuclei, NucleusTable):
        return nuclei.boxes()
    return np.array([[*n.polygon.min(0), *n.polygon.max(0)] for n in nuclei], np.float32).reshape(-1, 4)


def _tile_index(nuclei: Sequence[Nucleus], width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """The nuclei whose box meets each ``LABEL_TILE`` tile of a ``width`` x ``height`` plane: (indices, starts),
    where tile t (row-major) holds ``indices[starts[t]:starts[t + 1]]``, in increasing order. Arrays, not lists:
    4 bytes per nucleus and tile it meets, about 60 while they are made."""
    columns, rows = math.ceil(width / LABEL_TILE), math.ceil(height / LABEL_TILE)
    boxes = np.floor(_outline_boxes(nuclei).astype(np.float64))
    tx0 = np.clip(boxes[:, 0] // LABEL_TILE, 0, columns).astype(np.int32)  # clipped first: no wrap-around below
    ty0 = np.clip(boxes[:, 1] // LABEL_TILE, 0, rows).astype(np.int32)
    tx1 = np.clip(np.minimum(width - 1, boxes[:, 2]) // LABEL_TILE, -1, columns - 1).astype(np.int32)
    ty1 = np.clip(np.minimum(height - 1, boxes[:, 3]) // LABEL_TILE, -1, rows - 1).astype(np.int32)
    del boxes
    across, down = np.maximum(tx1 - tx0 + 1, 0), np.maximum(ty1 - ty0 + 1, 0)
    counts = across * down
    index = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    step = np.arange(len(index), dtype=np.int32) - np.repeat((np.cumsum(counts) - counts).astype(np.int32), counts)
    width_of = np.maximum(across, 1)[index]
    tile = (ty0[index] + step // width_of) * np.int64(columns) + tx0[index] + step % width_of
    del step, width_of
    order = np.argsort(tile, kind="stable")
    return index[order], np.searchsorted(tile[order], np.arange(rows * columns + 1))


def _label_tiles(nuclei: Sequence[Nucleus], width: int, height: int) -> Iterator[np.ndarray]:
    """uint32 (LABEL_TILE, LABEL_TILE) tiles of the rasterised nuclei (value: ``Nucleus.id``), row-major."""
    indices, starts = _tile_index(nuclei, width, height)
    columns = math.ceil(width / LABEL_TILE)
    for ty in range(math.ceil(height / LABEL_TILE)):
        for tx in range(columns):
            tile = np.zeros((LABEL_TILE, LABEL_TILE), np.uint32)
            t = ty * columns + tx
            for k in indices[starts[t] : starts[t + 1]]:
                nucleus = nuclei[int(k)]
                poly = nucleus.polygon
                rr, cc = fill_polygon(poly[:, 1] - ty * LABEL_TILE - 0.5, poly[:, 0] - tx * LABEL_TILE - 0.5, tile.shape)
                tile[rr, cc] = nucleus.id
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
