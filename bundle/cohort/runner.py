"""Cohort inference: the slides of a folder or manifest shared among ``torchrun``'s ranks, resumable, summarised.

    torchrun --standalone --nproc_per_node=4 scripts/segment_cohort.py cohort.csv -o outputs/cohort
    torchrun --standalone --nproc_per_node=4 -m monai.bundle run \\
        --config_file "['configs/inference.json','configs/cohort.json']" --input_path cohort.csv --output_dir outputs/cohort

Rank 0 reads the cohort (:mod:`bundle.cohort.manifest`), weighs every slide from its header, removes what a
killed run left half-written, and broadcasts the list; every rank takes its share (:func:`balanced_shards`, by
size), and runs each slide through the one pipeline (:meth:`NucleusSegmenter.segment`) into a private partial
folder that becomes ``<output_dir>/<name>/`` in one rename (:class:`SlideStore`). A slide whose folder is complete
and verified is not redone; a slide that fails is recorded with its reason and the rank goes on. After every rank
is done, rank 0 merges their records into ``cohort.csv`` and ``cohort.json`` (:mod:`bundle.cohort.summary`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from bundle.cohort.distributed import Ranks, join_ranks
from bundle.cohort.manifest import CohortSlide, read_cohort
from bundle.cohort.shard import balanced_shards
from bundle.cohort.store import SlideStore, write_json_atomic
from bundle.cohort.summary import merge_records, write_summary
from bundle.data.datalists import read_organ_table
from bundle.errors import EXIT_OK, InputError
from bundle.io.slides import check_mpp
from bundle.pipeline.check import check_output_dir
from bundle.pipeline.segmenter import NucleusSegmenter

__all__ = ["CohortRunner", "CohortResult"]
logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
SUMMARY_KEYS = ("nucleus_count", "nuclei_per_mm2_tissue", "tissue_area_mm2", "megapixels_level0", "seconds", "peak_rss_mb")


class CohortResult:
    """What a rank did, and on rank 0 the merged report (``cohort.json``); :meth:`exit` ends the process with its
    status (0: every slide complete; 2: some failed or were not processed)."""

    def __init__(self, records: List[Dict[str, Any]], report: Optional[Dict[str, Any]]):
        self.records, self.report = records, report

    @property
    def exit_status(self) -> int:
        if self.report is not None:
            return int(self.report["exit_status"])
        return EXIT_OK if all(r["status"] != "failed" for r in self.records) else 2

    def exit(self) -> None:
        if self.exit_status != EXIT_OK:
            raise SystemExit(self.exit_status)


class ProgressLog:
    """A rank's progress for whoever watches the run: ``<work>/rank<k>.json`` (slides, done, failed, current) and
    one JSON line per finished slide in ``<work>/rank<k>.jsonl``. Best effort: a write that fails (a full disk) is
    logged once and the slides go on; the records reach rank 0 through the process group, not these files.

    Args:
        work: the cohort's working folder (``<output_dir>/_cohort``).
        ranks: this process's place in the job.
        slides: how many slides the rank has.
    """

    def __init__(self, work: Path, ranks: Ranks, slides: int):
        self.status_file, self.records_file = work / f"rank{ranks.rank}.json", work / f"rank{ranks.rank}.jsonl"
        self.progress = {"rank": ranks.rank, "world_size": ranks.world_size, "host": socket.gethostname(), "pid": os.getpid(),
                         "slides": slides, "done": 0, "failed": 0, "current": None, "started": time.time()}
        self.failed_write: Optional[str] = None

    def start(self, slide: CohortSlide) -> None:
        self.progress["current"] = str(slide.path)
        self._write(lambda: write_json_atomic(self.status_file, self.progress))

    def finish(self, record: Dict[str, Any]) -> None:
        self.progress["done" if record["status"] != "failed" else "failed"] += 1
        self._write(lambda: self._append(json.dumps(record)))

    def close(self) -> None:
        self.progress["current"] = None
        self._write(lambda: write_json_atomic(self.status_file, self.progress))

    def _append(self, line: str) -> None:
        with open(self.records_file, "a") as f:
            f.write(line + "\n")

    def _write(self, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as e:
            if self.failed_write is None:
                self.failed_write = f"{e.filename or self.status_file}: {e.strerror or e}"
                logger.warning("rank %d: cannot write its progress (%s); its slides go on", self.progress["rank"], self.failed_write)


class CohortRunner:
    """Segments a cohort of slides over the ranks of a ``torchrun`` job (or in one process).

    Args:
        segmenter: the pipeline (``segmenter`` of ``configs/inference.json``), on this rank's device.
        backend: process group backend when the runner creates the group (None: NCCL with CUDA, else gloo).
        timeout_minutes: how long ranks wait for each other at the end (the slowest rank's last slide).
    """

    def __init__(self, segmenter: NucleusSegmenter, backend: Optional[str] = None, timeout_minutes: float = 24 * 60):
        self.segmenter = segmenter
        self.backend, self.timeout_minutes = backend, timeout_minutes

    def _plan(self, source: PathLike, output_dir: Path, mpp: Optional[float], organ_csv: Optional[PathLike]) -> Dict[str, Any]:
        """Rank 0's part before the work: the cohort (named, weighed), partial folders of killed runs removed."""
        check_output_dir(output_dir)
        slides = read_cohort(source, self.segmenter.model_mpp)
        organs = read_organ_table(organ_csv) if organ_csv else {}
        for slide in slides:
            slide.mpp = slide.mpp if slide.mpp is not None else mpp
            slide.organ = slide.organ or organs.get(slide.path.stem) or None
        store = SlideStore(output_dir)
        left = store.clear_partials()
        if left:
            logger.warning("removed %d half-written slide folder(s) of an earlier run from %s", left, store.partial_root)
        for old in [*store.work.glob("rank*.json*"), output_dir / "cohort.csv", output_dir / "cohort.json"]:
            old.unlink(missing_ok=True)  # an earlier run's records and summary never pass for this run's
        return {"slides": [asdict(s) for s in slides], "started": time.time()}

    def run(
        self,
        source: PathLike,
        output_dir: PathLike,
        mpp: Optional[float] = None,
        organ_csv: Optional[PathLike] = None,
    ) -> CohortResult:
        """Segment every slide of ``source`` that is not complete in ``output_dir`` yet; this rank's share.

        Args:
            source: a folder of slides and images, one file, or a CSV manifest (``path``, ``mpp``, ``organ``).
            output_dir: the cohort's output folder (one subfolder per slide, ``cohort.csv``, ``cohort.json``).
            mpp: microns per pixel of level 0 for slides without a manifest value (None: each file's).
            organ_csv: organ per file stem (see :func:`bundle.data.datalists.read_organ_table`) for slides
                without a manifest organ.

        Raises:
            InputError: on every rank, when rank 0 cannot read the cohort or write to ``output_dir``.
        """
        ranks = join_ranks(self.backend, self.timeout_minutes)
        output_dir = Path(output_dir)
        try:
            plan: Dict[str, Any]
            if ranks.rank == 0:
                try:
                    plan = self._plan(source, output_dir, check_mpp(mpp), organ_csv)
                except InputError as e:
                    plan = {"error": str(e)}
            plan = ranks.broadcast(plan if ranks.rank == 0 else None)
            if "error" in plan:
                raise InputError(plan["error"])
            slides = [CohortSlide(**{**s, "path": Path(s["path"])}) for s in plan["slides"]]
            mine = balanced_shards([s.weight for s in slides], ranks.world_size)[ranks.rank]
            records = self._run_share(SlideStore(output_dir), [slides[i] for i in mine], ranks)
            shares = ranks.gather(records)  # waits for every rank
            report = None
            if shares is not None:
                rows = merge_records(slides, {r["name"]: r for share in shares for r in share})
                report = write_summary(output_dir, str(source), slides, rows, time.time() - plan["started"], ranks.world_size)
                logger.info("cohort: %s -> %s", report["counts"], output_dir / "cohort.csv")
            return CohortResult(records, report)
        finally:
            ranks.close()

    def _run_share(self, store: SlideStore, slides: List[CohortSlide], ranks: Ranks) -> List[Dict[str, Any]]:
        """Process this rank's slides in turn; one record per slide, returned and appended to
        ``_cohort/rank<k>.jsonl`` (with the rank's progress in ``_cohort/rank<k>.json``) for whoever watches the run."""
        progress_log = ProgressLog(store.work, ranks, len(slides))
        records = []
        for index, slide in enumerate(slides, start=1):
            progress_log.start(slide)
            record = self._run_slide(store, slide, ranks.rank)
            records.append(record)
            progress_log.finish(record)
            logger.info("rank %d/%d: slide %d/%d %s: %s%s", ranks.rank, ranks.world_size, index, len(slides), slide.name,
                        record["status"], f" ({record['reason']})" if record.get("reason") else "")
        progress_log.close()
        return records

    def _settings(self, slide: CohortSlide) -> Dict[str, Any]:
        """What a slide's outputs depend on besides its file: the resolution and organ asked for, and the weights
        (path and modification time). A rerun with other settings redoes the slide."""
        weights = self.segmenter.weights
        stamp = os.stat(weights).st_mtime_ns if weights and os.path.isfile(weights) else None
        return {"mpp": slide.mpp, "organ": slide.organ or self.segmenter.organ, "weights": weights, "weights_mtime_ns": stamp}

    def _run_slide(self, store: SlideStore, slide: CohortSlide, rank: int) -> Dict[str, Any]:
        """One slide: kept when already complete, else segmented and published; failures become a record."""
        base = {"name": slide.name, "slide": str(slide.path), "rank": rank}
        output = {"output": str(store.final_dir(slide))}
        settings = self._settings(slide)
        done = store.completed(slide, settings)
        if done is not None:
            return {**base, **output, **{k: done.get(k) for k in SUMMARY_KEYS}, "rank": done.get("rank", ""), "status": "already_complete"}
        if slide.problem:
            return {**base, "status": "failed", "reason": slide.problem}
        parent = None
        try:
            parent = store.partial_parent(slide, rank)  # inside: a full disk fails this slide, not the rank
            summary = self.segmenter.segment(slide.path, parent, slide.mpp, slide.name, slide.organ)
            record = store.publish(slide, parent, {"rank": rank, "settings": settings, **{k: summary.get(k) for k in SUMMARY_KEYS}})
        except InputError as e:
            reason = str(e)
        except OSError as e:
            reason = f"{slide.path}: cannot write its outputs ({e.strerror or e})"
        except MemoryError:
            reason = f"{slide.path}: out of memory while segmenting it"
        except Exception as e:  # noqa: BLE001 - one slide's failure must not stop the rank's other slides
            logger.debug("traceback of %s", slide.path, exc_info=True)
            reason = f"{slide.path}: {type(e).__name__}: {e}"
        else:
            return {**base, **output, **{k: record.get(k) for k in SUMMARY_KEYS}, "status": "written"}
        if parent is not None:
            store.discard(parent)
        return {**base, "status": "failed", "reason": reason}
