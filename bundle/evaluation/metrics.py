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
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from monai.utils import min_version, optional_import
from scipy import ndimage

from bundle.io.images import read_mask
from bundle.pipeline.split import InstanceSplitter
from bundle.data.targets import instance_labels

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
    Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "METRIC_NAMES",
    "confusion_counts",
    "scores_from_counts",
    "summarize",
    "summarize_groups",
    "instance_overlaps",
    "aggregated_jaccard_index",
    "panoptic_quality",
    "detection_f1",
    "SegmentationReport",
]

METRIC_NAMES = ("dice", "iou", "precision", "recall")
INSTANCE_METRIC_NAMES = ("aji", "pq", "dq", "sq", "f1", "count_ratio")
GROUP_KEYS = ("dataset", "organ")  # item keys by which SegmentationReport breaks its summary down
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
        rows: per-image dicts holding the scores (those every row has are averaged) and, for the pooled pixel
            scores, the counts ``tp``, ``fp``, ``fn``, ``tn``; with ``n_true`` and ``n_pred``, the pooled count ratio.
    """
    if not rows:
        return {}
    summary: Dict[str, float] = {}
    for name in METRIC_NAMES + INSTANCE_METRIC_NAMES:  # the scores every row has
        if all(name in r for r in rows):
            summary[f"mean_{name}"] = float(np.mean([r[name] for r in rows]))
    if all(k in r for r in rows for k in ("tp", "fp", "fn", "tn")):
        pooled = {k: sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn", "tn")}
        summary.update({f"pooled_{k}": v for k, v in scores_from_counts(pooled).items()})
    if all("n_true" in r for r in rows):
        summary["pooled_count_ratio"] = sum(r["n_pred"] for r in rows) / max(1, sum(r["n_true"] for r in rows))
    summary["num_images"] = len(rows)
    return summary


def summarize_groups(rows: Sequence[Dict[str, Any]], key: str) -> Dict[str, Dict[str, float]]:
    """:func:`summarize` of the rows of each value of ``rows[i][key]`` (e.g. per dataset or per organ), sorted by
    value; rows without ``key`` are left out."""
    groups = sorted({str(r[key]) for r in rows if r.get(key) is not None})
    return {g: summarize([r for r in rows if str(r.get(key)) == g]) for g in groups}


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Instance ids -> consecutive 0..N (0 stays background)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int64)
    return out if ids[0] == 0 else out + 1


def instance_overlaps(true: Any, pred: Any) -> Dict[str, np.ndarray]:
    """Pixel overlaps of every pair of true and predicted instances that overlap (sparse: memory grows with the
    pixels, not with the product of the instance counts).

    Args:
        true: instance labels (H, W), 0 background.
        pred: instance labels (H, W), 0 background.

    Returns:
        ``{"true": (K,), "pred": (K,)`` 0-based indices of the instances (ids in increasing order) of the K
        overlapping pairs, ``"inter": (K,), "union": (K,)`` their pixel counts, ``"true_area": (N,),
        "pred_area": (M,)}``.

    Raises:
        ValueError: shapes differ.
    """
    t, p = np.asarray(true), np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    t, p = _relabel(t), _relabel(p)
    n, m = int(t.max()), int(p.max())
    both = (t > 0) & (p > 0)
    codes, inter = np.unique(t[both] * (m + 1) + p[both], return_counts=True)
    true_area = np.bincount(t.ravel(), minlength=n + 1)[1:]
    pred_area = np.bincount(p.ravel(), minlength=m + 1)[1:]
    ti, pi = codes // (m + 1) - 1, codes % (m + 1) - 1
    return {"true": ti, "pred": pi, "inter": inter, "union": true_area[ti] + pred_area[pi] - inter, "true_area": true_area, "pred_area": pred_area}


def aggregated_jaccard_index(true: Any, pred: Any) -> float:
    """AJI (Kumar et al. 2017), as computed by HoVer-Net's ``get_fast_aji``.

    Each true nucleus is paired with the predicted one of highest IoU (when they overlap; ties: the lower id); the
    AJI is the summed intersections of the pairs over the summed unions of the pairs plus the areas of unpaired
    true and predicted nuclei. 1.0 when both maps are empty.
    """
    return _aji(instance_overlaps(true, pred))


def _aji(o: Dict[str, np.ndarray]) -> float:
    """AJI of the overlaps of :func:`instance_overlaps`."""
    total = o["true_area"].sum() + o["pred_area"].sum()
    if len(o["inter"]) == 0:
        return 1.0 if total == 0 else 0.0
    iou = o["inter"] / np.maximum(o["union"], 1)
    order = np.lexsort((o["pred"], -iou, o["true"]))  # by true nucleus, best IoU first, then lower id
    first = order[np.r_[True, o["true"][order][1:] != o["true"][order][:-1]]]
    paired_true, best_pred = o["true"][first], o["pred"][first]
    union = o["union"][first].sum() + np.delete(o["true_area"], paired_true).sum() + np.delete(o["pred_area"], np.unique(best_pred)).sum()
    return float(o["inter"][first].sum() / union) if union > 0 else 1.0


def panoptic_quality(true: Any, pred: Any, iou_threshold: float = 0.5) -> Dict[str, float]:
    """Panoptic quality PQ = DQ x SQ (Kirillov et al.), counted as MONAI's ``compute_panoptic_quality`` counts it
    (tested against it), from the sparse overlaps, so memory does not grow with the number of predictions.

    Pairs of true and predicted nuclei with IoU > ``iou_threshold`` are matches (unique for thresholds >= 0.5).
    DQ = TP / (TP + FP / 2 + FN / 2); SQ = mean IoU of the matches; all 1.0 when both maps are empty.

    Returns:
        ``{"pq", "dq", "sq", "tp", "fp", "fn"}``.

    Raises:
        ValueError: shapes differ; ``iou_threshold`` below 0.5 (matches would not be unique).
    """
    return _panoptic_quality(instance_overlaps(true, pred), iou_threshold)


def _panoptic_quality(o: Dict[str, np.ndarray], iou_threshold: float = 0.5) -> Dict[str, float]:
    """PQ of the overlaps of :func:`instance_overlaps` (see :func:`panoptic_quality`)."""
    if iou_threshold < 0.5:
        raise ValueError(f"iou_threshold must be >= 0.5 for unique matches, got {iou_threshold}")
    n, m = len(o["true_area"]), len(o["pred_area"])
    if n == 0 and m == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    iou = o["inter"] / np.maximum(o["union"], 1)
    matched = iou > iou_threshold
    tp = int(matched.sum())
    fp, fn = m - tp, n - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].sum()) / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


def detection_f1(true: Any, pred: Any) -> float:
    """Object-level detection F1: a predicted nucleus detects the true nucleus that contains its centroid
    (each true nucleus detected at most once). 1.0 when both maps are empty."""
    t, p = _relabel(np.asarray(true)), _relabel(np.asarray(pred))
    n, m = int(t.max()), int(p.max())
    if n == 0 and m == 0:
        return 1.0
    centroids = ndimage.center_of_mass(np.ones_like(p), p, np.arange(1, m + 1)) if m else []
    hits = {int(t[int(round(r)), int(round(c))]) for r, c in centroids} - {0}
    tp = len(hits)
    return 2 * tp / (n + m) if n + m else 1.0


def instance_scores(true: Any, pred: Any) -> Dict[str, float]:
    """The instance scores the bundle reports for one image: ``{"aji", "pq", "dq", "sq", "f1", "count_ratio",
    "n_true", "n_pred"}`` (``count_ratio``: predicted over true nucleus count).

    Args:
        true: instance labels (H, W), 0 background (a binary truth: see ``bundle.data.targets.instance_labels``).
        pred: instance labels (H, W), 0 background.
    """
    overlaps = instance_overlaps(true, pred)  # once for AJI and PQ
    pq = _panoptic_quality(overlaps)
    n_true, n_pred = len(overlaps["true_area"]), len(overlaps["pred_area"])
    return {
        "aji": _aji(overlaps), "pq": pq["pq"], "dq": pq["dq"], "sq": pq["sq"],
        "f1": detection_f1(true, pred), "count_ratio": n_pred / max(n_true, 1), "n_true": n_true, "n_pred": n_pred,
    }


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
        instances: also compute AJI, PQ (DQ, SQ), detection F1 and the count ratio: predicted nuclei are split by
            ``splitter``, true nuclei are read from the label's file (instance ids; a binary mask is split into
            connected components).
        splitter: the instance splitting (:class:`bundle.pipeline.split.InstanceSplitter`); ``configs/evaluate.json``
            passes the settings of ``configs/inference.json``'s ``splitter``. Default: the class's own defaults,
            which are not the shipped ones (min_size 10, not 60).
        distance_key: batch key of the predicted normalised distance (1, H, W) (see
            :class:`bundle.pipeline.split.SplitNucleusChannelsd`); when an item has it, nuclei are split on its markers.

    Each row also holds the item's ``dataset`` and ``organ`` (when the data list gives them), and the summary
    file breaks the means down by each (``by_dataset``, ``by_organ``).
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike],
        pred_key: str = "pred",
        label_key: str = "label",
        prefix: str = "",
        instances: bool = False,
        splitter: Optional[InstanceSplitter] = None,
        distance_key: str = "pred_distance",
    ):
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.label_key = label_key
        self.prefix = prefix
        self.instances = instances
        self.splitter = splitter or InstanceSplitter()
        self.distance_key = distance_key
        self.rows: List[Dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _update(self, engine: Engine) -> None:
        output, data = engine.state.output, engine.state.batch  # decollated: one dict per image in each
        items = output if isinstance(output, list) else [output]
        sources = data if isinstance(data, list) else [data] * len(items)
        for item, source in zip(items, sources):
            pred, label = item[self.pred_key], item[self.label_key]
            meta = getattr(pred, "meta", {}) or {}
            name = meta.get("filename_or_obj", f"image_{len(self.rows)}")
            counts = confusion_counts(pred, label)
            row = {"image": Path(str(name)).name, **{k: source[k] for k in GROUP_KEYS if isinstance(source.get(k), str)}}
            row.update({**counts, **scores_from_counts(counts)})
            if self.instances:
                row.update(self._instance_scores(pred, label, item.get(self.distance_key)))
            self.rows.append(row)

    def _instance_scores(self, pred: Any, label: Any, distance: Any = None) -> Dict[str, float]:
        pred_np = torch.as_tensor(pred).detach().cpu().numpy().reshape(np.shape(pred)[-2:])
        pred_inst = self.splitter(pred_np, distance)
        source = (getattr(label, "meta", {}) or {}).get("filename_or_obj")
        truth = read_mask(str(source)).astype(np.int64) if source else np.asarray(torch.as_tensor(label).cpu()).reshape(pred_inst.shape)
        if truth.shape != pred_inst.shape:
            raise ValueError(f"{source}: truth {truth.shape} and prediction {pred_inst.shape} differ in size")
        return instance_scores(instance_labels(truth), pred_inst)  # a binary truth: connected components

    def _write(self, engine: Engine) -> None:
        summary = summarize(self.rows)
        if not summary:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        groups = {f"by_{key}": summarize_groups(self.rows, key) for key in GROUP_KEYS if any(key in r for r in self.rows)}
        (self.output_dir / "metrics_summary.json").write_text(json.dumps({**summary, **groups}, indent=2))
        for key, value in summary.items():
            engine.state.metrics[f"{self.prefix}{key}"] = value
        for group, value in groups.get("by_dataset", {}).items():  # per data set, for MLflow: <prefix><dataset>_<name>
            for key in ("mean_dice", "mean_aji", "mean_pq", "mean_f1", "mean_count_ratio"):
                if key in value:
                    engine.state.metrics[f"{self.prefix}{group}_{key}"] = value[key]
        logger.info(
            "%d images: mean Dice %.4f, IoU %.4f, precision %.4f, recall %.4f; pooled Dice %.4f -> %s",
            summary["num_images"], summary["mean_dice"], summary["mean_iou"], summary["mean_precision"],
            summary["mean_recall"], summary["pooled_dice"], self.output_dir / "metrics.csv",
        )
        if "mean_aji" in summary:
            logger.info("instances: mean AJI %.4f, PQ %.4f (DQ %.4f, SQ %.4f), detection F1 %.4f",
                        summary["mean_aji"], summary["mean_pq"], summary["mean_dq"], summary["mean_sq"], summary["mean_f1"])
