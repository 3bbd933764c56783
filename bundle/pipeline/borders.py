"""Nuclei on the borders between tiles: each stretch of tissue kept as one tile split it.

A tile keeps the nuclei whose centroid lies in its core. Two neighbouring tiles predict the nuclei on their common
border each on its own pixels, so they can disagree: where the tiles are resampled (a slide read at a scale that is
not a whole number of pixels, such as 0.2527 um/px to the model's 0.25) the two centroids of one nucleus differ by
up to half a pixel, and a nucleus can be split differently (one nucleus in one tile, two in the other). Deciding
by centroid alone, such a nucleus can be kept twice (both versions, overlapping) or partly lost.

So a tile measures the nuclei whose centroid lies up to ``reach`` pixels beyond the borders it shares with other
tiles, and those whose outline comes within twice that of such a border, from either side, are candidates.
Candidates of different tiles whose outlines overlap (by at least ``min_overlap`` of the smaller outline) are
linked; each group of linked candidates is one stretch of tissue seen by several tiles, and it is kept as one tile
(the owner) saw it. The other tiles' members that the owner's outlines cover more than half of are dropped; the
rest (a chain of nuclei split differently can reach further from the border than the owner measured) are
regrouped by their links and settled in the same way among the other tiles, so that they are neither lost nor,
where two other tiles saw them, kept twice. The owner is the tile whose choice costs least (over the others'
nuclei whose centroid their own core holds: the overlap of those left plus the area of those dropped that its
outlines do not cover), then the one whose core holds the group's centroid (the centroid of the union of its
outlines), else the nearest. A candidate no other tile saw is kept when its own tile holds its centroid, as
without this. A nucleus that reaches more than about ``reach`` from its centroid across a border (over twice
``reach`` long) can still be kept in part twice.

Tiles come row by row. A group waits until every tile that could hold a part of it has been sorted, the row below
its lowest point included: with the row being started, :meth:`BorderNuclei.resolve` settles the groups that end
above the row before it, so usually three rows of candidates are held at a time.
"""

from __future__ import annotations

import bisect
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import shapely

from bundle.pipeline.measure import Nucleus

__all__ = ["Edges", "BorderNuclei"]

Core = Tuple[float, float, float, float]  # (x0, y0, x1, y1) level-0 box a tile owns
Edges = Tuple[bool, bool, bool, bool]  # (left, top, right, bottom): whether another tile lies beyond that edge
Key = Tuple[int, int]  # (tile index, nucleus index in the tile)


def _distance_to_box(x: float, y: float, box: Core) -> float:
    """Euclidean distance from the point (x, y) to the box (x0, y0, x1, y1); 0 inside."""
    return math.hypot(max(box[0] - x, 0.0, x - box[2]), max(box[1] - y, 0.0, y - box[3]))


def _components(indices: Iterable[int], links: Dict[int, List[int]]) -> List[List[int]]:
    """The groups of ``indices`` connected by ``links`` (index -> linked indices) within them, each sorted, in
    the order of their smallest index."""
    remaining = set(indices)
    groups = []
    for start in sorted(remaining):
        if start not in remaining:
            continue
        remaining.discard(start)
        group, todo = [], [start]
        while todo:
            i = todo.pop()
            group.append(i)
            for j in links.get(i, []):
                if j in remaining:
                    remaining.discard(j)
                    todo.append(j)
        groups.append(sorted(group))
    return groups


class BorderNuclei:
    """Sorts each tile's nuclei into those it keeps and candidates near its shared borders, and settles the
    candidates row by row (see the module docstring).

    Args:
        reach: level-0 pixels beyond its shared borders up to which a tile measures nuclei (their centroids), about
            a nucleus's radius; a nucleus whose outline comes within ``2 * reach`` of a shared border, on either
            side, is a candidate, so that the nuclei another tile measured across the border meet this tile's
            versions among the candidates.
        row_starts: level-0 y at which each row of tiles begins, ascending.
        min_overlap: share of the smaller outline two candidates of different tiles must overlap to be linked.
    """

    def __init__(self, reach: float, row_starts: Sequence[float], min_overlap: float = 0.2):
        if reach < 0 or not 0 < min_overlap <= 1:
            raise ValueError(f"need reach >= 0 and 0 < min_overlap <= 1, got {reach}, {min_overlap}")
        self.reach, self.min_overlap = float(reach), float(min_overlap)
        self.row_starts = [float(y) for y in row_starts]
        self.cores: Dict[int, Core] = {}
        self.keys: List[Key] = []
        self.nuclei: List[Nucleus] = []
        self.polygons: List[shapely.Geometry] = []
        self.inside: List[bool] = []  # whether its own tile's core holds its centroid
        self.last_row: List[int] = []  # the last row of tiles that can hold a part of its group: the one below it

    def sort(self, tile: int, nuclei: Sequence[Nucleus], core: Core, edges: Edges) -> List[Nucleus]:
        """The nuclei a tile keeps for sure; its candidates are held until :meth:`resolve`, the rest dropped (they
        are another tile's).

        Args:
            tile: the tile's index (its place in the output order).
            nuclei: the tile's nuclei whose centroid lies in its core widened by ``reach`` across shared edges.
            core: the level-0 box (x0, y0, x1, y1) the tile owns.
            edges: which of its edges it shares with another tile.
        """
        x0, y0, x1, y1 = core
        left, top, right, bottom = edges
        zone = 2 * self.reach
        self.cores[tile] = core
        kept = []
        for index, nucleus in enumerate(nuclei):
            x, y = nucleus.centroid
            inside = x0 <= x < x1 and y0 <= y < y1
            if len(nucleus.polygon) == 0:
                if inside:
                    kept.append(nucleus)
                continue
            (bx0, by0), (bx1, by1) = nucleus.polygon.min(axis=0), nucleus.polygon.max(axis=0)
            near = (left and bx0 < x0 + zone) or (top and by0 < y0 + zone) or (right and bx1 > x1 - zone) or (bottom and by1 > y1 - zone)
            if not near:
                if inside:
                    kept.append(nucleus)
                continue
            polygon = shapely.Polygon(nucleus.polygon) if len(nucleus.polygon) >= 3 else shapely.Polygon()
            self.keys.append((tile, index))
            self.nuclei.append(nucleus)
            self.polygons.append(polygon if polygon.is_valid else shapely.make_valid(polygon))
            self.inside.append(inside)
            # the last row whose tiles can still see a part of its group: the row below its lowest point, or, for
            # tiles under 2 x reach high, the last whose nuclei (measured up to reach above it) can reach it
            below = bisect.bisect_right(self.row_starts, float(by1))
            self.last_row.append(max(below, bisect.bisect_right(self.row_starts, float(by1) + 2 * self.reach) - 1))
        return kept

    def resolve(self, row: Optional[int] = None) -> List[Nucleus]:
        """The nuclei to keep of the groups that no tile of row ``row`` or below can see any more (those that end
        above row ``row - 1``; None: all groups), in tile order; their candidates are cleared, the others wait.

        Args:
            row: the row of tiles about to be sorted; every tile above it must have been sorted.
        """
        if not self.nuclei:
            return []
        polygons = np.empty(len(self.polygons), dtype=object)
        polygons[:] = self.polygons
        a, b = shapely.STRtree(polygons).query(polygons, predicate="intersects")
        tiles = np.array([tile for tile, _ in self.keys])
        pairs = (a < b) & (tiles[a] != tiles[b])
        a, b = a[pairs], b[pairs]
        links: Dict[int, List[int]] = {}
        if len(a):
            overlap = shapely.area(shapely.intersection(polygons[a], polygons[b]))
            smaller = np.minimum(shapely.area(polygons[a]), shapely.area(polygons[b]))
            linked = (overlap >= self.min_overlap * smaller) & (smaller > 0)
            for i, j in zip(a[linked].tolist(), b[linked].tolist()):
                links.setdefault(i, []).append(j)
                links.setdefault(j, []).append(i)
        kept, waiting = [], []
        for found in _components(range(len(polygons)), links):
            if row is not None and max(self.last_row[i] for i in found) >= row:
                waiting.extend(found)
            else:
                kept.extend(self._settle(found, polygons, links))
        waiting.sort()
        self.keys = [self.keys[i] for i in waiting]
        self.nuclei = [self.nuclei[i] for i in waiting]
        self.polygons = [self.polygons[i] for i in waiting]
        self.inside = [self.inside[i] for i in waiting]
        self.last_row = [self.last_row[i] for i in waiting]
        return [nucleus for _, nucleus in sorted(kept, key=lambda item: item[0])]

    def _settle(self, found: List[int], polygons: np.ndarray, links: Dict[int, List[int]]) -> List[Tuple[Key, Nucleus]]:
        """The members of one group to keep (``links``: each candidate's linked candidates).

        Seen by one tile: those whose centroid its core holds. Seen by several: all of one tile's (the owner's);
        the others' that the owner's outlines cover more than half of are dropped, and the rest (the owner
        measured only the nuclei near the border, so a group that reaches further, a chain of nuclei split
        differently, would otherwise lose them) are regrouped by their links and settled in the same way without
        the owner. The owner is the tile whose choice costs least (of the others' nuclei whose centroid their own
        core holds: the overlap of those left plus the area outside the owner's outlines of those dropped), then
        the one whose core holds (or is nearest to) the group's centroid.
        """
        tiles = sorted({self.keys[i][0] for i in found})
        if len(tiles) == 1:
            return [(self.keys[i], self.nuclei[i]) for i in found if self.inside[i]]
        centre = shapely.centroid(shapely.union_all(polygons[found]))
        x, y = (centre.x, centre.y) if not centre.is_empty else self.nuclei[found[0]].centroid
        scale = max(float(shapely.area(polygons[found]).sum()), 1e-12)
        choices = []
        for owner in tiles:
            keep = [i for i in found if self.keys[i][0] == owner]
            others = [i for i in found if self.keys[i][0] != owner]
            covered = shapely.area(shapely.intersection(polygons[others], shapely.union_all(polygons[keep])))
            area = shapely.area(polygons[others])
            cost = sum(min(c, a - c) for i, c, a in zip(others, covered, area) if self.inside[i])  # overlap left plus area lost
            left = [i for i, c, a in zip(others, covered, area) if c <= a - c]
            choices.append(((round(cost / scale, 6), _distance_to_box(x, y, self.cores[owner]), owner), keep, left))
        _, keep, left = min(choices)
        settled = [(self.keys[i], self.nuclei[i]) for i in keep]
        for component in _components(left, links):
            settled += self._settle(component, polygons, links)
        return settled
