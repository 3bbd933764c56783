"""Instance metrics (AJI, PQ, DQ, SQ, detection F1) of the bundle's model on a split of a dataset.

    python scripts/evaluate_instances.py --dataset_dir <monuseg>/train --output runs/instances.json
    python scripts/evaluate_instances.py --dataset_dir <monuseg>/train --split train --min_distance 4,8,12 --sigma 1,2
    python scripts/evaluate_instances.py --configs configs/monuseg_tnbc.json --data_root <data> --marker_height 0.1,0.2,0.3 \\
        --distance_sigma 0,1,2 --min_size 10,30,60

Uses ``configs/inference.json`` (network, weights, pre-processing, sliding-window inferer, each image's organ
prompts) for the probability and distance maps (markers from the distance head; ``--mask_only`` takes them from
the mask instead) and :class:`bundle.pipeline.split.InstanceSplitter` for the instances. The split is the training
config's: ``--dataset_dir`` with ``--split_mode``, ``--val_fraction``, ``--split_seed``, or the ``datalists`` of
training overlays given by ``--configs`` and ``--split_seed`` (e.g. MoNuSeg by image and TNBC by patient). Comma lists of
``--min_distance``, ``--sigma``, ``--threshold``, ``--marker_height``, ``--distance_sigma`` and ``--min_size``
score every combination on the same maps; the table gives AJI, PQ, F1 and the predicted-to-true nucleus count
ratio (pooled), and the best setting's figures per data set. ``--truth_markers`` adds the AJI that perfect
splitting of the same mask would reach; ``--output`` holds the best one (by AJI) with its per-image values.
Truth instances come from the masks (MoNuSeg: instance ids; binary masks are split into connected components).
"""

from __future__ import annotations

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
from bundle.errors import CommandLineParser  # noqa: E402
from bundle.data.datalists import make_split  # noqa: E402
from bundle.io.images import read_mask, read_rgb  # noqa: E402
from bundle.evaluation.metrics import aggregated_jaccard_index, instance_scores, summarize_groups  # noqa: E402
from bundle.pipeline.split import InstanceSplitter, binary_mask, mark_unmarked_components  # noqa: E402
from bundle.data.targets import instance_labels  # noqa: E402


def _grid(text: str, kind: type) -> List:
    return [kind(v) for v in text.split(",") if v.strip()]


def truth_marker_split(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """An upper bound for splitting, not a method: the network's mask split with one marker per true nucleus
    (its core, eroded 2 px; a mask component without one keeps a marker of its own), flooded on the mask's
    distance transform."""
    mask = binary_mask(prob, threshold)
    markers = np.where(ndimage.binary_erosion(truth > 0, iterations=2) & mask, truth, 0)
    mark_unmarked_components(markers, ndimage.label(mask)[0], mask)
    return watershed(-ndimage.distance_transform_edt(mask), markers, mask=mask)


def main(argv: Optional[List[str]] = None) -> int:
    parser = CommandLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=None, help="a data set (or --configs)")
    parser.add_argument("--configs", action="append", default=[], help="training overlay whose datalists give the split, repeatable")
    parser.add_argument("--data_root", default=None, help="the --configs overlays' data_root (folder holding monuseg/ and tnbc/)")
    parser.add_argument("--variant", default="full", help="model variant: full or compact")
    parser.add_argument("--split", default="validation", choices=["train", "validation"], help="which part of the split to score")
    parser.add_argument("--split_mode", default="random")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--split_seed", type=int, default=0, help="the training config's split_seed")
    parser.add_argument("--model", default=None, help="checkpoint (default: the config's models/model.pt)")
    # each grid defaults to the variant's own setting (its configs' splitter), so that no flag scores what ships
    parser.add_argument("--min_distance", default=None, help="comma list: a grid of watershed settings is scored")
    parser.add_argument("--sigma", default=None, help="comma list")
    parser.add_argument("--threshold", default=None, help="comma list")
    parser.add_argument("--marker_height", default=None, help="comma list (networks with a distance head)")
    parser.add_argument("--distance_sigma", default=None, help="comma list: smoothing of the predicted distance")
    parser.add_argument("--min_size", default=None, help="comma list: smallest nucleus in pixels")
    parser.add_argument("--tta", action="store_true", help="average the four flips (configs' tta)")
    parser.add_argument("--mask_only", action="store_true", help="ignore the distance head: markers from the mask")
    parser.add_argument("--truth_markers", action="store_true", help="also print the AJI of the mask split on the truth's nuclei")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of the split")
    parser.add_argument("--output", default=None, help="JSON file for per-image and mean values")
    args = parser.parse_args(argv)

    overrides = {"tta": args.tta, **({"checkpoint": str(Path(args.model).resolve())} if args.model else {})}
    segmenter = load_config("inference", overrides=overrides, variant=args.variant).get_parsed_content("segmenter")
    for setting in ("min_distance", "sigma", "threshold", "marker_height", "distance_sigma", "min_size"):
        if getattr(args, setting) is None:
            setattr(args, setting, str(getattr(segmenter.splitter, setting)))
    if args.configs:
        split_overrides = {"split_seed": args.split_seed, **({"data_root": str(Path(args.data_root).resolve())} if args.data_root else {})}
        datalists = load_config(["train", *[str(Path(c).resolve()) for c in args.configs]], overrides=split_overrides).get_parsed_content("datalists")
    elif args.dataset_dir:
        datalists = make_split(args.dataset_dir, args.split_mode, args.val_fraction, seed=args.split_seed)
    else:
        parser.error("give --dataset_dir or --configs")
    items = datalists[args.split][: args.limit]
    maps = []
    for item in items:
        t0 = time.perf_counter()
        prob, distance = segmenter.predict(read_rgb(item["image"]), item.get("organ"))
        truth = instance_labels(read_mask(item["label"]))  # a binary truth: connected components
        groups = {k: item[k] for k in ("dataset", "organ") if k in item}
        maps.append((Path(item["image"]).name, prob, distance, truth, groups))
        print(f"{maps[-1][0]}: probability map in {time.perf_counter() - t0:.1f} s", flush=True)
    with_head = maps[0][2] is not None and not args.mask_only
    grids = {"min_distance": _grid(args.min_distance, int), "sigma": _grid(args.sigma, float),
             "threshold": _grid(args.threshold, float), "marker_height": _grid(args.marker_height, float),
             "distance_sigma": _grid(args.distance_sigma, float), "min_size": _grid(args.min_size, int)}
    results = []
    for values in itertools.product(*grids.values()):
        setting = dict(zip(grids, values))
        splitter = InstanceSplitter(**setting)
        rows = []
        for name, prob, distance, truth, groups in maps:
            pred = splitter(prob, distance if with_head else None)
            rows.append({"image": name, **groups, **instance_scores(truth, pred)})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "pq", "dq", "sq", "f1", "count_ratio")}
        mean["pooled_count_ratio"] = sum(r["n_pred"] for r in rows) / max(1, sum(r["n_true"] for r in rows))
        results.append({**setting, "markers": "distance head" if with_head else "mask distance transform", "mean": mean, "images": rows})
    print(f"{len(maps)} {args.split} images, markers from the {results[0]['markers']}")
    print("| " + " | ".join(grids) + " | AJI | PQ | DQ | SQ | F1 | count ratio |")
    print("|" + "---:|" * (len(grids) + 6))
    for r in sorted(results, key=lambda r: -r["mean"]["aji"]):
        m = r["mean"]
        print("| " + " | ".join(str(r[k]) for k in grids) + f" | {m['aji']:.4f} | {m['pq']:.4f} | {m['dq']:.4f} | {m['sq']:.4f} "
              f"| {m['f1']:.4f} | {m['pooled_count_ratio']:.3f} |")
    best = max(results, key=lambda r: r["mean"]["aji"])
    for key in ("dataset", "organ"):
        for group, m in summarize_groups(best["images"], key).items():
            print(f"best setting, {key} {group} ({m['num_images']} images): AJI {m['mean_aji']:.4f}, PQ {m['mean_pq']:.4f}, "
                  f"F1 {m['mean_f1']:.4f}, count ratio {m['pooled_count_ratio']:.3f}")
    if args.truth_markers:
        aji = np.mean([aggregated_jaccard_index(truth, truth_marker_split(prob, truth)) for _, prob, _, truth, _ in maps])
        print(f"upper bound with the truth's nuclei as markers (threshold 0.5): AJI {aji:.4f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({**best, "grid": [{k: v for k, v in r.items() if k != "images"} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
