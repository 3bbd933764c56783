"""Fit the distance head of a trained GRU-Net on its frozen last-decoder features, and pack it into the checkpoint.

    python scripts/research/cache_predictions.py --dataset_dir <monuseg>/train --split all --output_dir runs/cache/monuseg --features
    python scripts/research/train_distance_head.py --dataset_dir <monuseg>/train --cache_dir runs/cache/monuseg \\
        --output runs/distance_head/model.pt

The network's trunk and nucleus head stay as trained; only :class:`bundle.networks.blocks.DistanceHead` learns
(MSE to the normalised distance of the truth instances, on random crops of the cached features of the training
split). A CPU-sized job: the features are computed once. The output checkpoint holds the original weights plus
``distance.*`` and loads into ``GRUNet(distance_head=True)``. ``--report`` scores AJI / PQ / F1 on the cached
validation images with and without the head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bundle.training.checkpoints import load_state_dict  # noqa: E402
from bundle.data.datalists import make_split  # noqa: E402
from bundle.io.images import read_mask  # noqa: E402
from bundle.evaluation.metrics import instance_scores  # noqa: E402
from bundle.training.losses import distance_loss  # noqa: E402
from bundle.networks.blocks import DistanceHead  # noqa: E402
from bundle.pipeline.split import split_instances  # noqa: E402
from bundle.data.targets import instance_labels, normalized_distance  # noqa: E402


def _load(cache_dir: Path, items: List[Dict[str, str]]) -> List[Dict[str, np.ndarray]]:
    out = []
    for item in items:
        cached = np.load(cache_dir / f"{item['id']}.npz")
        truth = instance_labels(read_mask(item["label"]))
        out.append({"id": item["id"], "features": cached["features"], "prob": cached["prob"].astype(np.float32),
                    "truth": truth, "distance": normalized_distance(truth)})
    return out


def predict(head: DistanceHead, features: np.ndarray) -> np.ndarray:
    """features (C, H, W) -> predicted normalised distance (H, W), in row bands to bound memory."""
    head.eval()
    rows = []
    with torch.no_grad():
        for r0 in range(0, features.shape[1], 256):
            r_lo, r_hi = max(r0 - 16, 0), min(r0 + 256 + 16, features.shape[1])
            x = torch.from_numpy(features[:, r_lo:r_hi].astype(np.float32)).unsqueeze(0)
            y = torch.sigmoid(head(x))[0, 0].numpy()
            rows.append(y[r0 - r_lo: r0 - r_lo + min(256, features.shape[1] - r0)])
    return np.concatenate(rows, 0)


def score(samples: List[Dict[str, np.ndarray]], distances: Optional[List[np.ndarray]], marker_height: float) -> Dict[str, float]:
    rows = []
    for i, s in enumerate(samples):
        pred = split_instances(s["prob"], distance=None if distances is None else distances[i], marker_height=marker_height)
        rows.append(instance_scores(s["truth"], pred))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "models" / "model.pt"))
    parser.add_argument("--output", required=True, help="checkpoint to write (original weights + distance head)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--marker_heights", default="0.1,0.2,0.3", help="comma list scored on the training images")
    parser.add_argument("--resume_head", default=None, help="start from the distance head of this packed checkpoint")
    parser.add_argument("--report", action="store_true", help="score the validation images with and without the head")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    split = make_split(args.dataset_dir, "random", 0.2, seed=0)
    cache = Path(args.cache_dir)
    t0 = time.perf_counter()
    train = _load(cache, split["train"])
    print(f"{len(train)} training images loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    state = load_state_dict(args.model)
    channels = train[0]["features"].shape[0]
    head = DistanceHead(channels)
    if args.resume_head:
        packed = load_state_dict(args.resume_head)
        head.load_state_dict({k[len("distance."):]: v.float() for k, v in packed.items() if k.startswith("distance.")})
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.steps, 1), eta_min=args.lr / 50)
    head.train()
    t0 = time.perf_counter()
    running = 0.0
    for step in range(1, args.steps + 1):
        xs, ys = [], []
        for _ in range(args.batch):
            s = train[rng.integers(len(train))]
            h, w = s["distance"].shape
            r, c = rng.integers(h - args.crop + 1), rng.integers(w - args.crop + 1)
            xs.append(s["features"][:, r: r + args.crop, c: c + args.crop].astype(np.float32))
            ys.append(s["distance"][None, r: r + args.crop, c: c + args.crop])
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        pred = torch.sigmoid(head(x))
        loss = distance_loss(pred, y, (y > 0).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if step % 100 == 0:
            print(f"step {step}/{args.steps} loss {running / 100:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            running = 0.0

    thresholds = [float(v) for v in args.marker_heights.split(",")]
    tune = train[:8]
    tune_distances = [predict(head, s["features"]) for s in tune]
    table = {t: score(tune, tune_distances, t) for t in thresholds}
    best = max(table, key=lambda t: table[t]["aji"])
    print("training images (first 8), marker height -> AJI: " + ", ".join(f"{t}: {v['aji']:.4f}" for t, v in table.items()))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    packed = {**state, **{f"distance.{k}": v for k, v in head.state_dict().items()}}
    torch.save(packed, out)  # a plain state dict, as the shipped model.pt
    summary: Dict[str, object] = {"marker_height": best, "train_tuning": table, "steps": args.steps,
                                  "train_seconds": round(time.perf_counter() - t0, 1)}
    if args.report:
        del train
        val = _load(cache, split["validation"])
        distances = [predict(head, s["features"]) for s in val]
        summary["validation_with_head"] = score(val, distances, best)
        summary["validation_mask_watershed"] = score(val, None, best)
        for name in ("validation_mask_watershed", "validation_with_head"):
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[name].items()))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
