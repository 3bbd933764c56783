"""Nuclei on the borders between tiles (bundle.pipeline.borders)."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.pipeline.borders import BorderNuclei
from bundle.pipeline.measure import Nucleus

LEFT_CORE, RIGHT_CORE = (0.0, 0.0, 100.0, 100.0), (100.0, 0.0, 200.0, 100.0)  # two tiles sharing the edge x = 100
LEFT_EDGES, RIGHT_EDGES = (False, False, True, False), (True, False, False, False)


def square(cx: float, cy: float, half: float = 4.0) -> Nucleus:
    polygon = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]], np.float32)
    return Nucleus(polygon, (cx, cy), 1.0, 64.0, 32.0, 0.0, 1.0, 0.1)


CASES = [
    # (centroid x seen by the left tile or None, by the right tile or None, centroid x of the nucleus kept)
    (99.7, 100.2, [99.7]),  # each tile holds its own centroid: kept once, by the first
    (100.3, 99.8, [99.8]),  # neither holds its centroid: kept once, by the tile whose core is nearer
    (99.0, None, [99.0]),  # seen by one tile, inside its core
    (None, 99.5, []),  # seen by one tile, outside its core: the other tile's (skipped, or split otherwise)
    (50.0, None, [50.0]),  # far from the border: kept at once
]


@pytest.mark.parametrize("left_x, right_x, expected", CASES)
def test_border_nuclei_kept_once(left_x, right_x, expected):
    borders = BorderNuclei(band=2.0)
    kept = []
    if left_x is not None:
        kept += borders.sort(0, [square(left_x, 50.0)], LEFT_CORE, LEFT_EDGES)
    if right_x is not None:
        kept += borders.sort(1, [square(right_x, 50.0)], RIGHT_CORE, RIGHT_EDGES)
    kept += borders.resolve()
    assert [nucleus.centroid[0] for nucleus in kept] == expected
    assert borders.resolve() == [], "resolved candidates are cleared"


def test_touching_nuclei_of_two_tiles_stay_two():
    """Two different nuclei on either side of the border, both candidates, that touch: not merged (IoU 0)."""
    borders = BorderNuclei(band=4.0)
    kept = borders.sort(0, [square(98.0, 50.0, 2.0)], LEFT_CORE, LEFT_EDGES)
    kept += borders.sort(1, [square(102.0, 50.0, 2.0)], RIGHT_CORE, RIGHT_EDGES)
    kept += borders.resolve()
    assert sorted(n.centroid[0] for n in kept) == [98.0, 102.0]


def test_border_nuclei_checks_arguments():
    with pytest.raises(ValueError, match="band >= 0"):
        BorderNuclei(band=-1.0)
