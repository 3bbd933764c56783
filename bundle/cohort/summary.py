"""The cohort summary: one CSV row per slide and one JSON report, merged from every rank's record of the run.

``cohort.csv`` columns (:data:`COHORT_COLUMNS`): ``slide`` (input path), ``name`` (output folder), ``status``
(``written`` this run, ``already_complete`` verified from an earlier run, ``failed`` with its ``reason``, or
``not_processed`` when no rank reported it), nuclei, nuclei per mm2 of tissue, tissue area (mm2), level-0
megapixels, seconds, peak RSS (MB) and the rank that made it. ``cohort.json``: counts per status, the failures,
nuclei in all, wall time and throughput of the run (slides per hour, level-0 Mpx/s of the slides written), and per
rank its slides, weight, time and peak memory.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from bundle.cohort.manifest import CohortSlide
from bundle.cohort.store import write_json_atomic
from bundle.errors import EXIT_OK, EXIT_SKIPPED

__all__ = ["COHORT_COLUMNS", "DONE", "merge_records", "write_summary"]
logger = logging.getLogger(__name__)
COHORT_COLUMNS = (
    "slide", "name", "status", "nucleus_count", "nuclei_per_mm2_tissue", "tissue_area_mm2", "megapixels_level0",
    "seconds", "peak_rss_mb", "rank", "output", "reason",
)
DONE = ("written", "already_complete")  # statuses of a slide whose outputs are complete


def merge_records(slides: Sequence[CohortSlide], records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per slide, in cohort order, with :data:`COHORT_COLUMNS` (empty where not known)."""
    rows = []
    for slide in slides:
        record = records.get(slide.name, {"status": "not_processed", "reason": "no rank reported this slide (a rank stopped early)"})
        row = {key: record.get(key, "") for key in COHORT_COLUMNS}
        row.update(slide=str(slide.path), name=slide.name)
        rows.append(row)
    return rows


def write_summary(
    output_dir: Path, source: str, slides: Sequence[CohortSlide], rows: List[Dict[str, Any]], wall_seconds: float, world_size: int
) -> Dict[str, Any]:
    """Write ``cohort.csv`` and ``cohort.json`` (each atomically) and return the report. When they cannot be
    written (a full disk), that is logged as an error, the report says so (``summary_error``) and its exit status
    is 2; the slides' folders stay complete, and a rerun writes the summary without redoing them."""
    counts = {status: sum(r["status"] == status for r in rows) for status in ("written", "already_complete", "failed", "not_processed")}
    written = [r for r in rows if r["status"] == "written"]
    mpx = sum(float(r["megapixels_level0"] or 0) for r in written)
    weights = {s.name: s.weight for s in slides}
    ranks = []
    for rank in range(world_size):
        mine = [r for r in rows if r["rank"] == rank and r["status"] != "already_complete"]
        ranks.append({
            "rank": rank,
            "slides": len(mine),
            "written": sum(r["status"] == "written" for r in mine),
            "failed": sum(r["status"] == "failed" for r in mine),
            "model_megapixels": round(sum(weights[r["name"]] for r in mine) / 1e6, 3),
            "seconds": round(sum(float(r["seconds"] or 0) for r in mine), 2),
            "peak_rss_mb": max((float(r["peak_rss_mb"] or 0) for r in mine), default=0.0),
        })
    report = {
        "source": source,
        "output_dir": str(output_dir),
        "world_size": world_size,
        "slides": len(rows),
        "counts": counts,
        "nucleus_count": sum(int(r["nucleus_count"] or 0) for r in rows if r["status"] in DONE),
        "wall_seconds": round(wall_seconds, 2),
        "slides_per_hour": round(len(written) / wall_seconds * 3600, 2) if wall_seconds > 0 else None,
        "megapixels_level0_written": round(mpx, 3),
        "mpx_per_s_level0": round(mpx / wall_seconds, 4) if wall_seconds > 0 else None,
        "ranks": ranks,
        "failed": [{"slide": r["slide"], "reason": r["reason"], "rank": r["rank"]} for r in rows if r["status"] == "failed"],
        "not_processed": [r["slide"] for r in rows if r["status"] == "not_processed"],
        "exit_status": EXIT_OK if counts["written"] + counts["already_complete"] == len(rows) else EXIT_SKIPPED,
    }
    tmp = output_dir / f".cohort.csv.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COHORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, output_dir / "cohort.csv")
        write_json_atomic(output_dir / "cohort.json", report)
    except OSError as e:
        report.update(summary_error=f"{e.filename or output_dir}: cannot write the cohort summary ({e.strerror or e})", exit_status=EXIT_SKIPPED)
        logger.error("error: %s", report["summary_error"])
        for partial in (tmp, output_dir / f".cohort.json.{os.getpid()}.tmp"):
            partial.unlink(missing_ok=True)
    return report
