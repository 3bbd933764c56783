"""Instance metrics (AJI, PQ, DQ, SQ, detection F1) of the bundle's model on a split of a dataset.

    python scripts/evaluate_instances.py --dataset_dir <monuseg>/train --output runs/instances.json
    python scripts/evaluate_instances.py --dataset_dir <monuseg>/train --split train --min_distance 4,8,12 --sigma 1,2

Uses ``configs/inference.json`` (network, weights, pre-processing, sliding-window inferer) for the probability
and distance maps (markers from the distance head; ``--mask_only`` takes them from the mask instead) and
:func:`bundle.pipeline.split.split_instances` for the instances; the validation split is the training config's
(``--split_mode``, ``--val_fraction``, ``--seed``). Comma lists of ``--min_distance``, ``--sigma``, ``--threshold``
and ``--marker_height`` score every combination on the same maps (tune on ``--split train``, report on
``validation``); ``--truth_markers`` adds the AJI that perfect splitting of the same mask would reach; ``--output``
holds the best one (by AJI) with its per-image values. Truth instances come from the masks (MoNuSeg: instance
ids; binary masks are split into connected components).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import load_config  # noqa: E402
from bundle.data.datalists import make_split  # noqa: E402
from bundle.io.images import read_mask, read_rgb  # noqa: E402
from bundle.evaluation.metrics import aggregated_jaccard_index, instance_scores  # noqa: E402
from bundle.pipeline.split import binary_mask, split_instances  # noqa: E402
from bundle.data.targets import instance_labels  # noqa: E402


def _grid(text: str, kind: type) -> List:
    return [kind(v) for v in text.split(",") if v.strip()]


def truth_marker_split(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """An upper bound for splitting, not a method: the network's mask split with one marker per true nucleus
    (its core, eroded 2 px; a mask component without one keeps a marker of its own), flooded on the mask's
    distance transform."""
    mask = binary_mask(prob, threshold)
    markers = np.where(ndimage.binary_erosion(truth > 0, iterations=2) & mask, truth, 0)
    components, _ = ndimage.label(mask)
    unmarked = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for i, comp in enumerate(unmarked, start=int(truth.max()) + 1):
        r, c = np.argwhere(components == comp)[0]
        markers[r, c] = i
    return watershed(-ndimage.distance_transform_edt(mask), markers, mask=mask)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--split", default="validation", choices=["train", "validation"], help="which part of the split to score")
    parser.add_argument("--split_mode", default="random")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="checkpoint (default: the config's models/model.pt)")
    parser.add_argument("--min_distance", default="6", help="comma list: a grid of watershed settings is scored")
    parser.add_argument("--sigma", default="3.0", help="comma list")
    parser.add_argument("--threshold", default="0.5", help="comma list")
    parser.add_argument("--marker_height", default="0.2", help="comma list (networks with a distance head)")
    parser.add_argument("--tta", action="store_true", help="average the four flips (configs' tta)")
    parser.add_argument("--mask_only", action="store_true", help="ignore the distance head: markers from the mask")
    parser.add_argument("--truth_markers", action="store_true", help="also print the AJI of the mask split on the truth's nuclei")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of the split")
    parser.add_argument("--output", default=None, help="JSON file for per-image and mean values")
    args = parser.parse_args(argv)

    overrides = {"tta": args.tta, **({"checkpoint": str(Path(args.model).resolve())} if args.model else {})}
    predict = load_config("inference", overrides=overrides).get_parsed_content("segmenter").predictor
    items = make_split(args.dataset_dir, args.split_mode, args.val_fraction, seed=args.seed)[args.split][: args.limit]
    maps = []
    for item in items:
        t0 = time.perf_counter()
        prob, distance = predict(read_rgb(item["image"]))
        truth = instance_labels(read_mask(item["label"]))  # a binary truth: connected components
        maps.append((Path(item["image"]).name, prob, distance, truth))
        print(f"{maps[-1][0]}: probability map in {time.perf_counter() - t0:.1f} s", flush=True)
    with_head = maps[0][2] is not None and not args.mask_only
    settings = list(itertools.product(_grid(args.min_distance, int), _grid(args.sigma, float), _grid(args.threshold, float),
                                      _grid(args.marker_height, float)))
    results = []
    for min_distance, sigma, threshold, marker_height in settings:
        rows = []
        for name, prob, distance, truth in maps:
            pred = split_instances(prob, threshold=threshold, min_distance=min_distance, sigma=sigma,
                                   distance=distance if with_head else None, marker_height=marker_height)
            rows.append({"image": name, **instance_scores(truth, pred), "n_true": int(truth.max()), "n_pred": int(pred.max())})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "pq", "dq", "sq", "f1")}
        results.append({"min_distance": min_distance, "sigma": sigma, "threshold": threshold, "marker_height": marker_height,
                        "markers": "distance head" if with_head else "mask distance transform", "mean": mean, "images": rows})
    print(f"{len(maps)} {args.split} images, markers from the {results[0]['markers']}")
    print("| min_distance | sigma | threshold | marker_height | AJI | PQ | DQ | SQ | F1 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: -r["mean"]["aji"]):
        m = r["mean"]
        print(f"| {r['min_distance']} | {r['sigma']} | {r['threshold']} | {r['marker_height']} | {m['aji']:.4f} | {m['pq']:.4f} "
              f"| {m['dq']:.4f} | {m['sq']:.4f} | {m['f1']:.4f} |")
    if args.truth_markers:
        aji = np.mean([aggregated_jaccard_index(truth, truth_marker_split(prob, truth)) for _, prob, _, truth in maps])
        print(f"upper bound with the truth's nuclei as markers (threshold 0.5): AJI {aji:.4f}")
    best = max(results, key=lambda r: r["mean"]["aji"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({**best, "grid": [{k: v for k, v in r.items() if k != "images"} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
