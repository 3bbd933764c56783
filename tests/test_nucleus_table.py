"""The nuclei of a region on disk (bundle.pipeline.nucleus_table)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle.io.writers import write_csv, write_instances
from bundle.pipeline import nucleus_table
from bundle.pipeline.measure import Nucleus
from bundle.pipeline.nucleus_table import NucleusTable
from tests.helpers import ROOT


def nucleus(k: int) -> Nucleus:
    """A k-sided polygon around (10 k, 5 k) with measures derived from k."""
    angles = np.linspace(0, 2 * np.pi, 3 + k % 7, endpoint=False)
    polygon = np.stack([10 * k + 4 * np.cos(angles), 5 * k + 4 * np.sin(angles)], axis=1).astype(np.float32)
    return Nucleus(polygon, (10.0 * k, 5.0 * k), 1.5 * k, 2.5 * k, 3.5 * k, 0.01 * k, 1.0 / (k + 1), 0.001 * k)


@pytest.mark.parametrize("count, chunk", [(0, 4), (3, 4), (4, 4), (11, 4)])
def test_table_gives_back_what_was_appended(count, chunk, monkeypatch):
    monkeypatch.setattr(nucleus_table, "CHUNK", chunk)
    expected = [nucleus(k) for k in range(count)]
    with NucleusTable() as table:
        table.extend(expected[: count // 2])
        assert len(table) == count // 2
        table.extend(expected[count // 2 :])  # appending after a read
        folder = table.folder
        assert len(table) == count
        for k, (got, want) in enumerate(zip(table, expected)):
            assert got.id == k + 1 and np.array_equal(got.polygon, want.polygon)
            assert (got.centroid, got.area_um2, got.solidity) == (want.centroid, want.area_um2, want.solidity)
        if count:
            assert table[-1].id == count and np.array_equal(table[count - 1].polygon, expected[-1].polygon)
            assert table.boxes().shape == (count, 4)
            np.testing.assert_allclose(table.boxes()[0], [*expected[0].polygon.min(0), *expected[0].polygon.max(0)])
        with pytest.raises(IndexError):
            table[count]
    assert not folder.exists() and len(table) == 0, "closing removes the files"


def test_writers_give_the_same_files_from_a_table_and_a_list(tmp_path):
    nuclei = [nucleus(k) for k in range(1, 40)]
    for k, n in enumerate(nuclei, start=1):
        n.id = k
    with NucleusTable() as table:
        table.extend(nuclei)
        write_csv(tmp_path / "table.csv", table)
        write_instances(tmp_path / "table.tif", table, 700, 300, 0.25)
    write_csv(tmp_path / "list.csv", nuclei)
    write_instances(tmp_path / "list.tif", nuclei, 700, 300, 0.25)
    assert (tmp_path / "table.csv").read_bytes() == (tmp_path / "list.csv").read_bytes()
    assert (tmp_path / "table.tif").read_bytes() == (tmp_path / "list.tif").read_bytes()


def test_a_dropped_table_removes_its_files():
    table = NucleusTable()
    table.append(nucleus(1))
    folder = table.folder
    del table
    assert not folder.exists()


def test_a_killed_process_leaves_a_folder_the_next_table_removes(tmp_path):
    """A process killed while it holds a table (SIGKILL: no clean-up runs) leaves its folder; the next table made in
    the same place removes it, and leaves the folders of live processes alone."""
    script = (
        "import os, signal, sys; sys.path.insert(0, os.getcwd())\n"
        "from bundle.pipeline.nucleus_table import NucleusTable\n"
        f"t = NucleusTable({str(tmp_path)!r}); t._flush(); print(t.folder, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    left = Path(done.stdout.strip())
    assert done.returncode == -signal.SIGKILL and left.is_dir() and left.parent == tmp_path
    with NucleusTable(tmp_path) as mine:
        assert not left.exists(), "the killed process's folder is removed"
        with NucleusTable(tmp_path) as other:
            assert mine.folder.exists() and other.folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_table_that_cannot_be_written_names_its_folder(tmp_path):
    table = NucleusTable(tmp_path)
    table.append(nucleus(1))
    (table.folder / "vertices.f32").mkdir()  # a write into it fails as a full disk would
    with pytest.raises(OSError, match=f"cannot hold the nuclei in {table.folder}"):
        table._flush()
    table.close()


@pytest.mark.parametrize(
    "box, tiles",
    [
        ((10, 10, 20, 20), [0]),
        ((500, 10, 520, 20), [0, 1]),  # across a tile edge
        ((1025, 290, 1100, 400), [2]),  # partly off the plane's right edge
        ((-50, -50, -1, -1), []),  # wholly off the plane
        ((2e12, 2e12, 2e12 + 9, 2e12 + 9), []),  # far off: no int32 wrap-around into the plane
    ],
)
def test_tile_index_finds_the_tiles_a_box_meets(box, tiles):
    from bundle.io.writers import _tile_index

    x0, y0, x1, y1 = box
    polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    indices, starts = _tile_index([Nucleus(polygon, (x0, y0), 1.0, 1.0, 1.0, 0.0, 1.0, 0.0)], 1030, 300)
    assert len(starts) == 3 + 1 and [t for t in range(3) if starts[t + 1] > starts[t]] == tiles
    assert list(indices) == [0] * len(tiles)
