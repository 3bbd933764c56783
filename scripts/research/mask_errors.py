"""Where a model's nucleus masks go wrong on the validation images, and what other thresholds and markers would give.

    python scripts/research/mask_errors.py --configs configs/monuseg_tnbc.json --data_root <data> --variant compact
    python scripts/research/mask_errors.py --configs configs/monuseg_tnbc.json --data_root <data> --variant full \\
        --model <weights> [--tta]

One set of probability and distance maps per image (``configs/inference.json`` with the variant, as
``scripts/evaluate_instances.py`` makes them), then:

- per image: Dice, pixel precision and recall at threshold 0.5; the share of true nuclei missed (under 10% of their
  pixels predicted) and partly found (10-70%); the share of false-positive pixels in predicted components that
  touch a true nucleus (nuclei drawn too large) rather than alone (fragments);
- per data set, mean Dice of the mask at threshold 0.5, at Otsu's threshold and with hysteresis thresholds;
- per data set, mean AJI with the variant's splitter (h-maxima of the predicted distance), with markers from the
  predicted distance above a threshold (HoVer-Net style), and with one marker per true nucleus (the upper bound of
  splitting these masks, :func:`scripts.evaluate_instances.truth_marker_split`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.config_io import load_config  # noqa: E402
from bundle.data.targets import instance_labels  # noqa: E402
from bundle.evaluation.metrics import aggregated_jaccard_index, confusion_counts, scores_from_counts  # noqa: E402
from bundle.io.images import read_mask, read_rgb  # noqa: E402
from bundle.pipeline.split import InstanceSplitter, binary_mask, mark_unmarked_components  # noqa: E402
from scripts.evaluate_instances import truth_marker_split  # noqa: E402


def coverage(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """How the bool mask ``pred`` (H, W) meets the instance labels ``truth`` (H, W).

    Returns:
        ``{"precision", "recall", "missed", "partial", "fp_touching"}``: pixel precision and recall; the shares of true
        nuclei with under 10% and with 10-70% of their pixels predicted; the share of false-positive pixels lying in
        predicted components that overlap a true nucleus.
    """
    found = truth > 0
    ids = np.unique(truth[found])
    covered = np.asarray(ndimage.mean(pred, truth, ids)) if len(ids) else np.zeros(0)
    components, n = ndimage.label(pred)
    touching = np.zeros(n + 1, bool)
    touching[np.unique(components[pred & found])] = True
    false = pred & ~found
    return {
        "precision": float((pred & found).sum() / max(1, pred.sum())),
        "recall": float((pred & found).sum() / max(1, found.sum())),
        "missed": float((covered < 0.1).mean()) if len(ids) else 0.0,
        "partial": float(((covered >= 0.1) & (covered < 0.7)).mean()) if len(ids) else 0.0,
        "fp_touching": float(touching[components[false]].sum() / max(1, false.sum())),
    }


def threshold_marker_split(prob: np.ndarray, distance: np.ndarray, level: float, min_size: int = 60) -> np.ndarray:
    """Instances from markers where the predicted distance (smoothed 1 px) exceeds ``level`` (HoVer-Net style),
    flooded on the predicted distance inside the mask; a mask component without a marker keeps one of its own."""
    mask = binary_mask(prob, 0.5, min_size)
    energy = ndimage.gaussian_filter(distance, 1.0) * mask
    markers, _ = ndimage.label((energy > level) & mask)
    mark_unmarked_components(markers, ndimage.label(mask)[0], mask)
    return watershed(-energy, markers, mask=mask)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", action="append", required=True, help="training overlay whose datalists give the split")
    parser.add_argument("--data_root", required=True, help="folder holding monuseg/ and tnbc/")
    parser.add_argument("--variant", default="compact", help="model variant: full or compact")
    parser.add_argument("--model", default=None, help="checkpoint (default: the variant's shipped weights)")
    parser.add_argument("--tta", action="store_true", help="average the four flips")
    args = parser.parse_args(argv)

    overrides = {"tta": args.tta, **({"checkpoint": str(Path(args.model).resolve())} if args.model else {})}
    segmenter = load_config("inference", overrides=overrides, variant=args.variant).get_parsed_content("segmenter")
    splitter: InstanceSplitter = segmenter.splitter
    root = {"data_root": str(Path(args.data_root).resolve())}
    items = load_config(["train", *[str(Path(c).resolve()) for c in args.configs]], overrides=root).get_parsed_content("datalists")["validation"]

    masks: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "0.5": lambda p: p > 0.5, "otsu": lambda p: p > threshold_otsu(p),
        **{f"hysteresis {lo}-{hi}": (lambda lo, hi: lambda p: apply_hysteresis_threshold(p, lo, hi))(lo, hi)
           for lo, hi in [(0.3, 0.6), (0.4, 0.6), (0.4, 0.7)]},
    }
    splits: Dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
        f"h-maxima {splitter.marker_height} (the variant's)": lambda p, d, t: splitter(p, d),
        **{f"distance > {level}": (lambda level: lambda p, d, t: threshold_marker_split(p, d, level, splitter.min_size))(level)
           for level in (0.3, 0.4, 0.5, 0.6)},
        "truth's nuclei as markers (upper bound)": lambda p, d, t: truth_marker_split(p, t),
    }
    rows = []
    print("| image | data set | organ | Dice | precision | recall | true nuclei missed | partly found | false pixels on a true nucleus |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for item in items:
        t0 = time.perf_counter()
        prob, distance = segmenter.predict(read_rgb(item["image"]), item.get("organ"))
        truth = instance_labels(read_mask(item["label"]))
        c = coverage(prob > 0.5, truth)
        row = {"dataset": item.get("dataset", "all"), **{f"dice {k}": scores_from_counts(confusion_counts(f(prob), truth > 0))["dice"] for k, f in masks.items()},
               **{f"aji {k}": aggregated_jaccard_index(truth, f(prob, distance, truth)) for k, f in splits.items()}}
        rows.append(row)
        print(f"| {Path(item['image']).stem} | {row['dataset']} | {item.get('organ', '')} | {row['dice 0.5']:.3f} | {c['precision']:.3f} "
              f"| {c['recall']:.3f} | {c['missed']:.2f} | {c['partial']:.2f} | {c['fp_touching']:.2f} |  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    groups = sorted({r["dataset"] for r in rows}) + ["all"]
    print("\n| mean over the images | " + " | ".join(groups) + " |")
    print("|---|" + "---:|" * len(groups))
    for key in [k for k in rows[0] if k != "dataset"]:
        means = [np.mean([r[key] for r in rows if g in ("all", r["dataset"])]) for g in groups]
        print(f"| {key} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
