"""Cohort inference: many slides over the ranks of a ``torchrun`` job, resumable, with one merged summary.

The flow: ``manifest`` (which slides) -> ``shard`` (whose share) -> ``runner`` (each slide through the one
pipeline) -> ``store`` (atomic per-slide folders) -> ``summary`` (``cohort.csv``, ``cohort.json``).
"""

from bundle.cohort.manifest import CohortSlide, read_cohort
from bundle.cohort.runner import CohortResult, CohortRunner
from bundle.cohort.shard import balanced_shards

__all__ = ["CohortRunner", "CohortResult", "CohortSlide", "read_cohort", "balanced_shards"]
