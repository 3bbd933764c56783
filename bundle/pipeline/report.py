"""``report.json``: what a batch wrote, skipped and converted; one schema for every entry point.

Schema::

    {
      "written":     [<summary of each input written>, ...],      # bundle.pipeline.segmenter summaries
      "skipped":     [{"input": path, "reason": text}, ...],      # inputs that could not be processed
      "ignored":     [{"input": path, "reason": text}, ...],      # files in the folder that are not inputs
      "conversions": [{"input": path, "conversion": text}, ...],  # e.g. grayscale image replicated to RGB
      "nucleus_count": total over the written inputs,
      "exit_status": 0 (all written) or 2 (some skipped)          # see bundle.errors
    }
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Union

from bundle.errors import EXIT_OK, EXIT_SKIPPED

__all__ = ["RunReport"]
logger = logging.getLogger(__name__)


class RunReport:
    """The report of one batch, saved to ``<output_dir>/report.json`` (thread-safe): after a change when the last
    save is ``save_interval`` seconds old, so that a long batch does not rewrite a growing file after every input
    (5,000 summaries are 6 MB), and by :meth:`save` at the end of the batch. Each save replaces the file in one
    rename: a reader never sees half of it.

    Args:
        output_dir: where ``report.json`` goes (it must exist).
        save_interval: seconds between saves while the batch runs.
    """

    def __init__(self, output_dir: Union[str, os.PathLike], save_interval: float = 10.0):
        self.path = Path(output_dir) / "report.json"
        self.written: List[Dict[str, Any]] = []
        self.skipped: List[Dict[str, str]] = []
        self.ignored: List[Dict[str, str]] = []
        self.conversions: List[Dict[str, str]] = []
        self.save_interval = save_interval
        self._saved_at = -float("inf")
        self._lock = threading.Lock()

    @property
    def exit_status(self) -> int:
        """:data:`bundle.errors.EXIT_OK` when nothing was skipped, else :data:`bundle.errors.EXIT_SKIPPED`."""
        return EXIT_SKIPPED if self.skipped else EXIT_OK

    def add_written(self, summary: Dict[str, Any]) -> None:
        with self._lock:
            self.written.append(summary)
            if summary.get("conversion"):
                self.conversions.append({"input": summary["input"], "conversion": summary["conversion"]})
            self._save_when_due()

    def add_skipped(self, path: Union[str, os.PathLike], reason: str) -> None:
        logger.error("skipped %s", reason)
        with self._lock:
            self.skipped.append({"input": str(path), "reason": reason})
            self._save_when_due()

    def add_ignored(self, items: List[Dict[str, str]]) -> None:
        for item in items:
            logger.warning("ignored %s: %s", item["input"], item["reason"])
        with self._lock:
            self.ignored.extend(items)
            self._save_when_due()

    def as_dict(self) -> Dict[str, Any]:
        return {
            "written": self.written,
            "skipped": self.skipped,
            "ignored": self.ignored,
            "conversions": self.conversions,
            "nucleus_count": sum(int(s.get("nucleus_count", 0)) for s in self.written),
            "exit_status": self.exit_status,
        }

    def save(self) -> None:
        """Write ``report.json`` now (through a temporary file and a rename)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2))
        os.replace(tmp, self.path)
        self._saved_at = time.monotonic()

    def _save_when_due(self) -> None:
        if time.monotonic() - self._saved_at >= self.save_interval:
            self.save()

    def exit(self) -> None:
        """End the process with :attr:`exit_status` when inputs were skipped (for the bundle command line)."""
        if self.exit_status != EXIT_OK:
            logger.warning("%d of %d inputs skipped, see %s", len(self.skipped), len(self.skipped) + len(self.written), self.path)
            raise SystemExit(self.exit_status)
