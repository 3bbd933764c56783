"""Instance metrics (AJI, PQ, DQ, SQ, detection F1) of the bundle's model on a split of a dataset.

    python scripts/evaluate_instances.py --dataset_dir <monuseg>/train --output runs/instances.json

Uses ``configs/inference.json`` (network, weights, pre-processing, sliding-window inferer) for the probability
map and :func:`bundle.postprocess.split_instances` for the instances; the validation split is the training
config's (``--split_mode``, ``--val_fraction``, ``--seed``). Truth instances come from the masks (MoNuSeg:
instance ids; binary masks are split into connected components).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.checkpoints import load_state_dict  # noqa: E402
from bundle.config_io import load_config  # noqa: E402
from bundle.data import make_split  # noqa: E402
from bundle.image_io import read_mask  # noqa: E402
from bundle.metrics import aggregated_jaccard_index, detection_f1, panoptic_quality  # noqa: E402
from bundle.postprocess import split_instances  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--split_mode", default="random")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="checkpoint (default: the config's models/model.pt)")
    parser.add_argument("--min_distance", type=int, default=4)
    parser.add_argument("--output", default=None, help="JSON file for per-image and mean values")
    args = parser.parse_args(argv)

    config = load_config("inference")
    device = config.get_parsed_content("device")
    net = config.get_parsed_content("network_def").to(device).eval()
    net.load_state_dict(load_state_dict(args.model or Path(config.get_parsed_content("ckpt_dir")) / "model.pt"))
    preprocess = config.get_parsed_content("preprocessing")
    inferer = config.get_parsed_content("inferer")
    items = make_split(args.dataset_dir, args.split_mode, args.val_fraction, seed=args.seed)["validation"]
    rows = []
    for item in items:
        t0 = time.perf_counter()
        image = preprocess({"image": item["image"]})["image"].unsqueeze(0).to(device)
        with torch.no_grad():
            prob = torch.sigmoid(inferer(image, net))[0, 0].float().cpu().numpy()
        pred = split_instances(prob, min_distance=args.min_distance)
        truth = read_mask(item["label"]).astype(np.int64)
        if len(np.unique(truth)) <= 2:  # binary truth: connected components
            truth, _ = ndimage.label(truth > 0)
        pq = panoptic_quality(truth, pred)
        rows.append({"image": Path(item["image"]).name, "aji": aggregated_jaccard_index(truth, pred), "pq": pq["pq"],
                     "dq": pq["dq"], "sq": pq["sq"], "f1": detection_f1(truth, pred), "n_true": int(truth.max()),
                     "n_pred": int(pred.max()), "seconds": time.perf_counter() - t0})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "pq", "dq", "sq", "f1")}
    print("mean " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()) + f" over {len(rows)} images")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"mean": mean, "images": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
