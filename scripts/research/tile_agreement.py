"""Tiled against untiled: the nuclei of a slide segmented in tiles, compared with one tile over the whole slide.

    python scripts/research/tile_agreement.py ../shared/data/wsi/CMU-1-Small-Region.svs [--variant compact] [--sw_overlap 0.25]

The slide is segmented twice by the same segmenter (``configs/inference.json``): in its tiles, then as one tile
as large as the slide (the network's windows are the same size; only the tiling differs). Nuclei are matched by
outline, IoU >= 0.5. Printed, for the nuclei within ``--near`` model pixels of a border between tiles and for the
others: the untiled nuclei, the share the tiled run matches, those it lost (no tiled outline overlaps them at
all), the tiled nuclei without a match, and the pairs of tiled nuclei that overlap (by more than 20% of the smaller outline: kept twice, by two tiles). Far from the
borders the two runs differ only where the windows fall differently; near them the tiles' borders add their
own differences, which this measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.config_io import load_config  # noqa: E402
from bundle.io.slides import open_source  # noqa: E402


def outlines(geojson: Path) -> np.ndarray:
    """The nuclei's outlines (level-0 pixels) of a GeoJSON written by the pipeline."""
    features = json.loads(geojson.read_text())["features"]
    return np.array([shapely.make_valid(shapely.Polygon(f["geometry"]["coordinates"][0])) for f in features], dtype=object)


def matched(query: np.ndarray, reference: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """bool per ``query`` outline: whether some ``reference`` outline overlaps it with IoU >= ``min_iou``."""
    found = np.zeros(len(query), bool)
    a, b = shapely.STRtree(reference).query(query, predicate="intersects")
    if len(a):
        overlap = shapely.area(shapely.intersection(query[a], reference[b]))
        iou = overlap / (shapely.area(query[a]) + shapely.area(reference[b]) - overlap)
        found[a[iou >= min_iou]] = True
    return found


def touched(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """bool per ``query`` outline: whether any ``reference`` outline overlaps it at all (positive area)."""
    found = np.zeros(len(query), bool)
    a, b = shapely.STRtree(reference).query(query, predicate="intersects")
    if len(a):
        found[a[shapely.area(shapely.intersection(query[a], reference[b])) > 0]] = True
    return found


def overlapping(polygons: np.ndarray, share: float = 0.2) -> np.ndarray:
    """(K, 2) index pairs of outlines that overlap by more than ``share`` of the smaller one."""
    a, b = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    a, b = a[a < b], b[a < b]
    overlap = shapely.area(shapely.intersection(polygons[a], polygons[b]))
    smaller = np.minimum(shapely.area(polygons[a]), shapely.area(polygons[b]))
    keep = overlap > share * smaller
    return np.stack([a[keep], b[keep]], axis=1)


def near_borders(polygons: np.ndarray, step: float, width: float, height: float, near: float) -> np.ndarray:
    """bool per outline: whether its centroid lies within ``near`` level-0 pixels of a line between tiles
    (multiples of ``step``, inside the slide)."""
    centres = shapely.get_coordinates(shapely.centroid(polygons))
    result = np.zeros(len(polygons), bool)
    for axis, extent in ((0, width), (1, height)):
        lines = np.arange(step, extent, step)
        if len(lines):
            result |= np.abs(centres[:, axis, None] - lines[None, :]).min(axis=1) < near
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--variant", default="compact")
    parser.add_argument("--near", type=float, default=64.0, help="model pixels from a border between tiles")
    parser.add_argument("--sw_overlap", type=float, default=None, help="overlap of the network's windows (default: the config's)")
    args = parser.parse_args()
    overrides = {} if args.sw_overlap is None else {"sw_overlap": args.sw_overlap}
    segmenter = load_config("inference", overrides=overrides, variant=args.variant).get_parsed_content("segmenter")
    segmenter.progress = False
    source = open_source(args.slide)
    width, height, scale = source.width, source.height, source.mpp / segmenter.model_mpp
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tile_size = segmenter.tile_size
        for name, size in (("tiled", tile_size), ("untiled", int(max(width, height) * scale) + 2)):
            segmenter.tile_size = size
            summary = segmenter.segment(args.slide, Path(tmp) / name)
            runs[name] = outlines(Path(tmp) / name / Path(args.slide).stem / f"{Path(args.slide).stem}.geojson")
            print(f"{name}: tile {size} model px, {summary['nucleus_count']} nuclei, {summary['seconds']:.1f} s", flush=True)
        segmenter.tile_size = tile_size
    tiled, untiled = runs["tiled"], runs["untiled"]
    step, near = tile_size / scale, args.near / scale
    untiled_near, tiled_near = (near_borders(p, step, width, height, near) for p in (untiled, tiled))
    untiled_found, tiled_found, untiled_touched = matched(untiled, tiled), matched(tiled, untiled), touched(untiled, tiled)
    pairs = overlapping(tiled)
    pair_near = tiled_near[pairs[:, 0]] | tiled_near[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    print(f"borders every {step:.1f} level-0 px; near: centroid within {near:.1f} level-0 px ({args.near:g} model px) of one")
    print("where | untiled nuclei | matched by the tiled run | lost | tiled nuclei | without a match | overlapping pairs (kept twice)")
    for label, u, t, p in (("near", untiled_near, tiled_near, pair_near), ("far", ~untiled_near, ~tiled_near, ~pair_near)):
        share = untiled_found[u].sum() / max(1, u.sum())
        print(f"{label:>5} | {u.sum():>14} | {share:.4f} ({untiled_found[u].sum()}) | {(~untiled_touched[u]).sum():>4} | {t.sum():>12} | "
              f"{(~tiled_found[t]).sum():>15} | {p.sum()}")


if __name__ == "__main__":
    main()
