"""A cohort's output folder: each slide's files appear complete or not at all, and are verified on a rerun.

Layout of ``<output_dir>``::

    <name>/                      one folder per slide that finished: the pipeline's files
                                 (bundle.pipeline.segmenter) and complete.json
    _cohort/partial/<name>.r<k>/ a slide being written by rank k (moved to <name>/ in one rename when done;
                                 left-overs of a killed run are removed when the next run starts)
    _cohort/rank<k>.jsonl        rank k's record of this run, a line per slide
    _cohort/rank<k>.json         rank k's progress (slides done, failed, the current one)
    cohort.csv, cohort.json      the merged summary (bundle.cohort.summary)

``complete.json`` lists every file of the slide with its size and the input's size and modification time: a
folder whose files are all there with those sizes, made from the same input file, is complete; anything else is
redone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from bundle.cohort.manifest import CohortSlide

__all__ = ["SlideStore", "COMPLETE_FILE", "WORK_DIR", "write_json_atomic"]
PathLike = Union[str, os.PathLike]
COMPLETE_FILE = "complete.json"
WORK_DIR = "_cohort"  # one of bundle.pipeline.check.RUN_FILES: no slide's folder gets this name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _input_stamp(path: Path) -> Dict[str, int]:
    stat = path.stat()
    return {"input_bytes": int(stat.st_size), "input_mtime_ns": int(stat.st_mtime_ns)}


class SlideStore:
    """Where each slide of a cohort is written, atomically, and how a finished one is recognised.

    Args:
        output_dir: the cohort's output folder (created).
    """

    def __init__(self, output_dir: PathLike):
        self.root = Path(output_dir)
        self.work = self.root / WORK_DIR
        self.partial_root = self.work / "partial"
        self.partial_root.mkdir(parents=True, exist_ok=True)

    def final_dir(self, slide: CohortSlide) -> Path:
        return self.root / slide.name

    def partial_parent(self, slide: CohortSlide, rank: int) -> Path:
        """An empty folder to write the slide into (``<it>/<name>/``), private to this rank; made afresh."""
        parent = self.partial_root / f"{slide.name}.r{rank}"
        shutil.rmtree(parent, ignore_errors=True)
        parent.mkdir(parents=True, exist_ok=True)  # a left-over that could not be removed is written over
        return parent

    def discard(self, parent: Path) -> None:
        shutil.rmtree(parent, ignore_errors=True)

    def clear_partials(self) -> int:
        """Remove what killed runs left half-written; returns how many slides' partial folders there were."""
        left = list(self.partial_root.iterdir()) if self.partial_root.is_dir() else []
        for p in left:
            shutil.rmtree(p, ignore_errors=True)
        return len(left)

    def completed(self, slide: CohortSlide, settings: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The ``complete.json`` record of the slide's folder when the folder is complete and was made from this
        input file (same path, size, modification time) with these ``settings`` (the record's ``"settings"``, as
        :meth:`publish` stored them; None: not compared); None otherwise."""
        folder = self.final_dir(slide)
        try:
            record = json.loads((folder / COMPLETE_FILE).read_text())
            if settings is not None and record.get("settings") != json.loads(json.dumps(settings)):
                return None  # another resolution, organ or weights: the outputs are redone
            same_input = Path(record["input"]).resolve() == Path(slide.path).resolve()  # however the path was spelt
            if not same_input or any(record[k] != v for k, v in _input_stamp(slide.path).items()):
                return None
            if any((folder / name).stat().st_size != size for name, size in record["files"].items()):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return record

    def publish(self, slide: CohortSlide, parent: Path, record: Dict[str, Any]) -> Dict[str, Any]:
        """Move a slide written into ``parent/<name>/`` to ``<output_dir>/<name>/`` in one rename.

        The summary's file paths are rewritten to the final folder and ``complete.json`` is added first, so the
        folder is complete the moment it appears. An older, incomplete folder of the slide is removed first.

        Args:
            slide: the slide.
            parent: from :meth:`partial_parent`, holding ``<name>/`` as the pipeline wrote it.
            record: what to store in ``complete.json`` besides the file list and input stamp (rank, seconds, ...).

        Returns:
            The ``complete.json`` record.
        """
        written, final = parent / slide.name, self.final_dir(slide)
        summary_file = written / f"{slide.name}_summary.json"
        summary = json.loads(summary_file.read_text())
        summary["files"] = {k: str(final / Path(v).name) for k, v in summary.get("files", {}).items()}
        summary_file.write_text(json.dumps(summary, indent=2))
        files = {p.name: p.stat().st_size for p in sorted(written.iterdir()) if p.is_file()}
        record = {"input": str(slide.path), **_input_stamp(slide.path), **record, "files": files}
        (written / COMPLETE_FILE).write_text(json.dumps(record, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(written, final)
        self.discard(parent)
        return record
