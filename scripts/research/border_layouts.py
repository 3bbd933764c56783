"""Random layouts of nuclei at a corner of four tiles, split by each tile on its own: how many are lost or kept twice.

    python scripts/research/border_layouts.py [--layouts 200] [--seed 1]

A grid of touching boxes (the true nuclei, 3-6 or 5-10 px a side) covers the corner where four 100-px tiles meet.
Each tile sees its own version: neighbouring boxes merged in pairs at random (probability ``pmerge``), the whole
version shifted by up to ``jitter`` px, reported where the tile measures nuclei (centroid within ``reach`` = 8 px
of its core across shared edges). :class:`bundle.pipeline.borders.BorderNuclei` settles the four tiles as the
pipeline does (``resolve(1)`` before the second row). Printed per setting: the true nuclei within 16 px of an
edge, those lost (under half covered by the kept outlines) and the pairs kept twice (two kept outlines
overlapping by over half the smaller). Written with a reviewer's check of 0.7.6.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.pipeline.borders import BorderNuclei  # noqa: E402
from bundle.pipeline.measure import Nucleus  # noqa: E402

CORES = [(0.0, 0.0, 100.0, 100.0), (100.0, 0.0, 200.0, 100.0), (0.0, 100.0, 100.0, 200.0), (100.0, 100.0, 200.0, 200.0)]
EDGES = [(False, False, True, True), (True, False, False, True), (False, True, True, False), (True, True, False, False)]
REACH = 8.0
Box = Tuple[float, float, float, float]


def rectangle(x0: float, y0: float, x1: float, y1: float) -> Nucleus:
    polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return Nucleus(polygon, ((x0 + x1) / 2, (y0 + y1) / 2), 1.0, (x1 - x0) * (y1 - y0), 2 * (x1 - x0 + y1 - y0), 0.0, 1.0, 0.1)


def cuts(rng: np.random.Generator, low: float, high: float) -> List[float]:
    """Positions from ``low`` past 140 with random steps in [low, high)."""
    edges = [60.0]
    while edges[-1] < 140.0:
        edges.append(edges[-1] + rng.uniform(low, high))
    return edges


def tile_view(rng: np.random.Generator, xs: Sequence[float], ys: Sequence[float], tile: int, pmerge: float, jitter: float) -> List[Nucleus]:
    """One tile's version of the grid of boxes: pairs merged at random, shifted, where the tile measures."""
    nx, ny = len(xs) - 1, len(ys) - 1
    used = np.zeros((ny, nx), bool)
    dx, dy = rng.uniform(-jitter, jitter, 2)
    pieces: List[Box] = []
    for j in range(ny):
        for i in range(nx):
            if used[j, i]:
                continue
            draw, i1, j1 = rng.random(), i, j
            if draw < pmerge / 2 and i + 1 < nx and not used[j, i + 1]:
                i1 = i + 1
            elif draw < pmerge and j + 1 < ny and not used[j + 1, i]:
                j1 = j + 1
            used[j : j1 + 1, i : i1 + 1] = True
            pieces.append((xs[i] + dx, ys[j] + dy, xs[i1 + 1] + dx, ys[j1 + 1] + dy))
    (x0, y0, x1, y1), (left, top, right, bottom) = CORES[tile], EDGES[tile]
    lo_x, lo_y, hi_x, hi_y = x0 - REACH * left, y0 - REACH * top, x1 + REACH * right, y1 + REACH * bottom
    return [rectangle(*p) for p in pieces if lo_x <= (p[0] + p[2]) / 2 < hi_x and lo_y <= (p[1] + p[3]) / 2 < hi_y]


def one_layout(rng: np.random.Generator, low: float, high: float, pmerge: float, jitter: float) -> Tuple[int, int, int]:
    """(true nuclei near an edge, lost, pairs kept twice) for one random layout."""
    xs, ys = cuts(rng, low, high), cuts(rng, low, high)
    views = [tile_view(rng, xs, ys, tile, pmerge, jitter) for tile in range(4)]
    borders = BorderNuclei(REACH, [0.0, 100.0])
    kept = borders.sort(0, views[0], CORES[0], EDGES[0]) + borders.sort(1, views[1], CORES[1], EDGES[1]) + borders.resolve(1)
    kept += borders.sort(2, views[2], CORES[2], EDGES[2]) + borders.sort(3, views[3], CORES[3], EDGES[3]) + borders.resolve()
    outlines = np.array([shapely.Polygon(n.polygon) for n in kept], dtype=object)
    union = shapely.union_all(outlines)
    near = lost = 0
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            cx, cy = (xs[i] + xs[i + 1]) / 2, (ys[j] + ys[j + 1]) / 2
            if max(cx, cy) > 140.0 - high or not (abs(cx - 100.0) < 16.0 or abs(cy - 100.0) < 16.0):
                continue
            cell = shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1])
            near += 1
            lost += union.intersection(cell).area < 0.5 * cell.area
    a, b = shapely.STRtree(outlines).query(outlines, predicate="intersects")
    a, b = a[a < b], b[a < b]
    overlap = shapely.area(shapely.intersection(outlines[a], outlines[b]))
    twice = int((overlap > 0.5 * np.minimum(shapely.area(outlines[a]), shapely.area(outlines[b]))).sum())
    return near, lost, twice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("boxes px | pmerge | jitter px | nuclei near an edge | lost | kept twice")
    for low, high, pmerge, jitter in ((3.0, 6.0, 0.5, 0.0), (3.0, 6.0, 0.5, 0.5), (5.0, 10.0, 0.5, 0.0), (3.0, 6.0, 0.2, 0.0)):
        rng = np.random.default_rng(args.seed)
        totals = np.sum([one_layout(rng, low, high, pmerge, jitter) for _ in range(args.layouts)], axis=0)
        near, lost, twice = (int(v) for v in totals)
        print(f"{low:g}-{high:g} | {pmerge} | {jitter} | {near} | {lost} ({100 * lost / near:.2f}%) | {twice} ({100 * twice / near:.2f}%)", flush=True)


if __name__ == "__main__":
    main()
