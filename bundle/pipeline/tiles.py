"""Tiles of an image or slide region: cores that cover it once, and read windows with context around them."""

from __future__ import annotations

import math
from typing import Iterator, Tuple

__all__ = ["Box", "TileGrid"]

Box = Tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive


def _window(c0: int, c1: int, margin: int, need: int, extent: int) -> Tuple[int, int]:
    """[c0, c1) widened by ``margin`` on both sides within [0, extent), then to ``need`` pixels where it was cut at
    an edge (the context moves inward), so that edge tiles are as large as inner ones."""
    r0, r1 = max(0, c0 - margin), min(extent, c1 + margin)
    need = min(need, extent)
    if r1 - r0 < need:
        if r0 == 0:
            r1 = min(extent, need)
        else:
            r0 = max(0, r1 - need)
    return r0, r1


class TileGrid:
    """Tiles of a ``width`` x ``height`` plane: cores of ``size`` pixels, read windows ``margin`` pixels larger.

    Cores cover the plane exactly once, row-major. A read window is the core and its ``margin`` of context; at the
    plane's edges, where that would be cut, the window reaches further inward instead, so that every window is
    ``size + 2 * margin`` pixels a side (or the whole plane where it is smaller). Nothing is padded here.

    Args:
        width: plane width in pixels, > 0.
        height: plane height in pixels, > 0.
        size: core side in pixels, > 0.
        margin: context in pixels, >= 0.

    Raises:
        ValueError: a size that is not positive or a negative margin.
    """

    def __init__(self, width: int, height: int, size: int, margin: int):
        if width <= 0 or height <= 0 or size <= 0 or margin < 0:
            raise ValueError(f"need width, height, size > 0 and margin >= 0, got {width}, {height}, {size}, {margin}")
        self.width, self.height, self.size, self.margin = int(width), int(height), int(size), int(margin)

    def __iter__(self) -> Iterator[Tuple[Box, Box]]:
        """Yields (core, read) boxes as (x0, y0, x1, y1), row-major."""
        need = self.size + 2 * self.margin
        for y0 in range(0, self.height, self.size):
            for x0 in range(0, self.width, self.size):
                core = (x0, y0, min(x0 + self.size, self.width), min(y0 + self.size, self.height))
                rx0, rx1 = _window(core[0], core[2], self.margin, need, self.width)
                ry0, ry1 = _window(core[1], core[3], self.margin, need, self.height)
                yield core, (rx0, ry0, rx1, ry1)

    def __len__(self) -> int:
        return math.ceil(self.width / self.size) * math.ceil(self.height / self.size)
