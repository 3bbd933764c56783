"""Segmentation metrics: pure per-image functions, and an ignite handler that writes per-image CSV + JSON.

All metrics compare binary masks at full resolution (prediction thresholded at 0.5). Per-image values are
averaged over images ("mean_*"); the dataset-pooled values sum the pixel counts over all images first
("pooled_*"). An image where prediction and truth are both empty scores 1 (nothing to find, nothing found).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Union

import numpy as np
import torch
from monai.utils import min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
    Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["METRIC_NAMES", "confusion_counts", "scores_from_counts", "summarize", "SegmentationReport"]

METRIC_NAMES = ("dice", "iou", "precision", "recall")
logger = logging.getLogger(__name__)


def confusion_counts(pred: Any, target: Any) -> Dict[str, int]:
    """Pixel counts of a binary prediction against a binary truth.

    Args:
        pred: prediction, any shape; a pixel is positive where ``pred > 0.5``.
        target: truth of the same shape; positive where ``target > 0.5`` (instance ids count as positive).

    Returns:
        ``{"tp", "fp", "fn", "tn"}``.

    Raises:
        ValueError: shapes differ.
    """
    p = torch.as_tensor(pred).detach().cpu() > 0.5
    t = torch.as_tensor(target).detach().cpu() > 0.5
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from truth shape {tuple(t.shape)}")
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.numel()) - tp - fp - fn}


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def scores_from_counts(counts: Dict[str, int]) -> Dict[str, float]:
    """Dice, IoU, precision and recall from :func:`confusion_counts` (1.0 where the denominator is 0)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Mean of per-image scores (``mean_<name>``) and dataset-pooled scores (``pooled_<name>``).

    Args:
        rows: per-image dicts holding the counts and the scores.
    """
    if not rows:
        return {}
    summary = {f"mean_{name}": float(np.mean([r[name] for r in rows])) for name in METRIC_NAMES}
    pooled = {k: sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn", "tn")}
    summary.update({f"pooled_{k}": v for k, v in scores_from_counts(pooled).items()})
    summary["num_images"] = len(rows)
    return summary


class SegmentationReport:
    """Ignite handler: per-image Dice, IoU, precision and recall of ``pred`` against ``label``.

    At the end of a run it writes ``<output_dir>/metrics.csv`` (one row per image) and
    ``<output_dir>/metrics_summary.json``, and puts the summary values into ``engine.state.metrics`` (so the
    MLflow handler, attached after this one, logs them).

    Args:
        output_dir: folder for the CSV and JSON files.
        pred_key: batch key of the binary prediction (B, 1, H, W).
        label_key: batch key of the truth (B, 1, H, W).
        prefix: prefix of the names put in ``engine.state.metrics``.
    """

    def __init__(self, output_dir: Union[str, os.PathLike], pred_key: str = "pred", label_key: str = "label", prefix: str = ""):
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.label_key = label_key
        self.prefix = prefix
        self.rows: List[Dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _update(self, engine: Engine) -> None:
        batch = engine.state.output
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            meta = getattr(pred, "meta", {}) or {}
            name = meta.get("filename_or_obj", f"image_{len(self.rows)}")
            counts = confusion_counts(pred, label)
            self.rows.append({"image": Path(str(name)).name, **counts, **scores_from_counts(counts)})

    def _write(self, engine: Engine) -> None:
        summary = summarize(self.rows)
        if not summary:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        (self.output_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
        for key, value in summary.items():
            engine.state.metrics[f"{self.prefix}{key}"] = value
        logger.info(
            "%d images: mean Dice %.4f, IoU %.4f, precision %.4f, recall %.4f; pooled Dice %.4f -> %s",
            summary["num_images"], summary["mean_dice"], summary["mean_iou"], summary["mean_precision"],
            summary["mean_recall"], summary["pooled_dice"], self.output_dir / "metrics.csv",
        )
