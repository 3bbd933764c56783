"""The nuclei of a region, kept on disk while it is segmented: memory stays bounded however many nuclei a slide has.

A 40x slide holds one to a few million nuclei; as Python objects (outline and measures) each takes about 0.7 KB,
so a list of them grows to gigabytes. :class:`NucleusTable` appends them to two files in a temporary folder (in the
output folder when the segmenter writes files): outlines as float32 vertices, measures as one fixed-size record
each, in chunks of :data:`CHUNK`. It reads them back by index or in order through memory maps, which the operating
system pages in and out. The writers
(:mod:`bundle.io.writers`) take it as any sequence of :class:`~bundle.pipeline.measure.Nucleus`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union, overload

import numpy as np

from bundle.pipeline.measure import Nucleus

__all__ = ["CHUNK", "PREFIX", "RECORD", "NucleusTable", "remove_stale_tables"]
PREFIX = ".nuclei-"  # the table folders are named .nuclei-<pid>-<random>
CHUNK = 4096  # nuclei held in memory before they are appended to the files
RECORD = np.dtype([
    ("start", "<i8"), ("count", "<i4"), ("cx", "<f8"), ("cy", "<f8"), ("area_um2", "<f8"), ("area_px", "<f8"),
    ("perimeter_um", "<f8"), ("eccentricity", "<f8"), ("solidity", "<f8"), ("mean_haematoxylin", "<f8"),
    ("box", "<f4", (4,)),  # x0, y0, x1, y1 of the outline, level-0 pixels
])


class NucleusTable(Sequence[Nucleus]):
    """An append-only sequence of nuclei on disk; ``table[k]`` is the nucleus with ``id`` k + 1.

    Args:
        folder: where its temporary folder ``.nuclei-<pid>-<random>`` goes (None: the system's temporary folder);
            the segmenter puts it in the output folder, on the disk the outputs go to.

    The folder is removed by :meth:`close` (or ``with``), or when the table is garbage-collected; a folder that a
    killed process left in ``folder`` is removed by the next table made there.

    Raises:
        OSError: the folder cannot be made or written (its ``filename`` names it).
    """

    def __init__(self, folder: Optional[Union[str, Path]] = None):
        if folder is not None:
            remove_stale_tables(Path(folder))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=folder))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._records_file, self._vertices_file = self.folder / "records.bin", self.folder / "vertices.f32"
        self._pending: List[Nucleus] = []
        self._written = 0  # nuclei in the files
        self._vertices = 0  # vertices in the files
        self._maps: Optional[tuple] = None

    def append(self, nucleus: Nucleus) -> None:
        self._pending.append(nucleus)
        if len(self._pending) >= CHUNK:
            self._flush()

    def extend(self, nuclei: Iterable[Nucleus]) -> None:
        for nucleus in nuclei:
            self.append(nucleus)

    def __len__(self) -> int:
        return self._written + len(self._pending)

    @overload
    def __getitem__(self, index: int) -> Nucleus: ...

    @overload
    def __getitem__(self, index: slice) -> List[Nucleus]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"nucleus {index} of {len(self)}")
        records, vertices = self._read()
        return _nucleus(records[index], vertices, index + 1)

    def __iter__(self) -> Iterator[Nucleus]:
        records, vertices = self._read()
        for start in range(0, len(records), CHUNK):
            chunk = np.array(records[start : start + CHUNK])  # one read per chunk
            for k, record in enumerate(chunk):
                yield _nucleus(record, vertices, start + k + 1)

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 outline boxes (x0, y0, x1, y1) in level-0 pixels, in id order (memory-mapped)."""
        return self._read()[0]["box"]

    def close(self) -> None:
        """Remove the files; the table is empty afterwards."""
        self._maps, self._pending, self._written, self._vertices = None, [], 0, 0
        self._finalizer()

    def __enter__(self) -> "NucleusTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        records = np.zeros(len(self._pending), RECORD)
        polygons = [np.asarray(n.polygon, np.float32).reshape(-1, 2) for n in self._pending]
        counts = np.array([len(p) for p in polygons], np.int64)
        records["start"] = self._vertices + np.concatenate([[0], np.cumsum(counts)[:-1]])
        records["count"] = counts
        for name in ("area_um2", "area_px", "perimeter_um", "eccentricity", "solidity", "mean_haematoxylin"):
            records[name] = [getattr(n, name) for n in self._pending]
        records["cx"], records["cy"] = zip(*(n.centroid for n in self._pending))
        records["box"] = [np.concatenate([p.min(0), p.max(0)]) if len(p) else (0, 0, 0, 0) for p in polygons]
        try:
            with open(self._vertices_file, "ab") as f:
                np.concatenate(polygons).astype("<f4").tofile(f)
            with open(self._records_file, "ab") as f:
                records.tofile(f)
        except OSError as e:
            raise OSError(e.errno, f"cannot hold the nuclei in {self.folder}: {e.strerror or e}", str(self.folder)) from e
        self._written += len(records)
        self._vertices += int(counts.sum())
        self._pending, self._maps = [], None

    def _read(self) -> tuple:
        """(records, vertices) memory maps of everything appended so far."""
        self._flush()
        if self._maps is None:
            if self._written == 0:
                self._maps = (np.zeros(0, RECORD), np.zeros((0, 2), np.float32))
            else:
                records = np.memmap(self._records_file, RECORD, "r", shape=(self._written,))
                vertices = np.memmap(self._vertices_file, "<f4", "r", shape=(self._vertices, 2)) if self._vertices else np.zeros((0, 2), np.float32)
                self._maps = (records, vertices)
        return self._maps


def remove_stale_tables(folder: Path) -> None:
    """Remove the table folders in ``folder`` whose process is gone (killed before it could remove them)."""
    for stale in folder.glob(f"{PREFIX}*"):
        try:
            pid = int(stale.name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _nucleus(record: np.void, vertices: np.ndarray, nucleus_id: int) -> Nucleus:
    start, count = int(record["start"]), int(record["count"])
    return Nucleus(
        polygon=np.array(vertices[start : start + count]),
        centroid=(float(record["cx"]), float(record["cy"])),
        area_um2=float(record["area_um2"]),
        area_px=float(record["area_px"]),
        perimeter_um=float(record["perimeter_um"]),
        eccentricity=float(record["eccentricity"]),
        solidity=float(record["solidity"]),
        mean_haematoxylin=float(record["mean_haematoxylin"]),
        id=nucleus_id,
    )
