"""Nuclei on the borders between tiles: each kept once, by one tile.

A tile keeps the nuclei whose centroid lies in its core. Two neighbouring tiles predict a nucleus on their common
border each on its own pixels; where the tiles are resampled (a slide read at a scale that is not a whole number
of pixels, such as 0.2527 um/px to the model's 0.25), the two centroids differ by up to half a pixel, and a nucleus
within that distance of the border could be kept by both tiles or by neither. So the nuclei within ``band``
pixels of a border shared with another tile, on either side of it, are set aside as candidates; at the end of the
region, candidates of different tiles whose outlines overlap (IoU >= ``min_iou``) are one nucleus, which is kept
once: by a tile that holds its centroid, else (both centroids just outside their own cores) by the tile whose core
is nearest. A candidate that no other tile saw is kept when its own tile holds its centroid, as without this.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import shapely

from bundle.pipeline.measure import Nucleus

__all__ = ["Edges", "BorderNuclei"]

Edges = Tuple[bool, bool, bool, bool]  # (left, top, right, bottom): whether another tile lies beyond that edge
Key = Tuple[int, int]  # (tile index, nucleus index in the tile)


class BorderNuclei:
    """Sorts each tile's nuclei into those it keeps and candidates near its shared borders, and resolves the
    candidates of all tiles at the end (see the module docstring).

    Args:
        band: level-0 pixels on each side of a shared border within which a nucleus is a candidate (> the
            disagreement between two tiles' centroids of one nucleus, about half a model pixel).
        min_iou: overlap of two tiles' outlines above which they are one nucleus.
    """

    def __init__(self, band: float, min_iou: float = 0.5):
        if band < 0 or not 0 < min_iou <= 1:
            raise ValueError(f"need band >= 0 and 0 < min_iou <= 1, got {band}, {min_iou}")
        self.band, self.min_iou = float(band), float(min_iou)
        self.keys: List[Key] = []
        self.nuclei: List[Nucleus] = []
        self.outside: List[float] = []  # level-0 pixels from a candidate's centroid to its own core (0: inside)

    def sort(self, tile: int, nuclei: Sequence[Nucleus], core: Tuple[float, float, float, float], edges: Edges) -> List[Nucleus]:
        """The nuclei a tile keeps for sure; its candidates are held until :meth:`resolve`.

        Args:
            tile: the tile's index (its place in the output order).
            nuclei: the tile's nuclei whose centroid lies in its core widened by ``band`` across shared edges.
            core: the level-0 box (x0, y0, x1, y1) the tile owns.
            edges: which of its edges it shares with another tile.
        """
        x0, y0, x1, y1 = core
        left, top, right, bottom = edges
        kept = []
        for index, nucleus in enumerate(nuclei):
            x, y = nucleus.centroid
            outside = max(x0 - x, x - x1, y0 - y, y - y1, 0.0)
            inside = x0 <= x < x1 and y0 <= y < y1
            near = (left and x - x0 < self.band) or (top and y - y0 < self.band) or (right and x1 - x <= self.band) or (bottom and y1 - y <= self.band)
            if inside and not near:
                kept.append(nucleus)
            elif inside or outside < self.band:
                self.keys.append((tile, index))
                self.nuclei.append(nucleus)
                self.outside.append(0.0 if inside else outside)
        return kept

    def resolve(self) -> List[Nucleus]:
        """One nucleus per group of overlapping candidates of different tiles, in tile order; the candidates are
        cleared."""
        if not self.nuclei:
            return []
        polygons = np.array([shapely.Polygon(n.polygon) if len(n.polygon) >= 3 else shapely.Polygon() for n in self.nuclei], dtype=object)
        invalid = ~shapely.is_valid(polygons)
        polygons[invalid] = shapely.make_valid(polygons[invalid])  # an empty polygon (under 3 vertices) matches none
        group = list(range(len(polygons)))

        def root(i: int) -> int:
            while group[i] != i:
                group[i] = group[group[i]]
                i = group[i]
            return i

        a, b = shapely.STRtree(polygons).query(polygons, predicate="intersects")
        tiles = np.array([tile for tile, _ in self.keys])
        pairs = (a < b) & (tiles[a] != tiles[b])
        a, b = a[pairs], b[pairs]
        if len(a):
            overlap = shapely.area(shapely.intersection(polygons[a], polygons[b]))
            union = shapely.area(polygons[a]) + shapely.area(polygons[b]) - overlap
            same = (overlap >= self.min_iou * union) & (union > 0)
            for i, j in zip(a[same], b[same]):
                group[root(int(j))] = root(int(i))
        members: Dict[int, List[int]] = {}
        for i in range(len(polygons)):
            members.setdefault(root(i), []).append(i)
        kept = []
        for found in members.values():
            inside = [i for i in found if self.outside[i] == 0.0]
            if inside:
                best = min(inside, key=lambda i: self.keys[i])  # the first tile that holds its centroid
            elif len(found) > 1:
                best = min(found, key=lambda i: (self.outside[i], self.keys[i]))  # seen by several, held by none
            else:
                continue  # seen by one tile only, outside its core: another tile's, or none's as before
            kept.append((self.keys[best], self.nuclei[best]))
        self.keys, self.nuclei, self.outside = [], [], []
        return [nucleus for _, nucleus in sorted(kept, key=lambda item: item[0])]
