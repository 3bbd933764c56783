"""Train and evaluate GRU-Net's ablations at one matched budget on one split, and print the table.

    python scripts/run_ablations.py --dataset_dir <monuseg>/train --output_dir runs/ablations --epochs 10 \\
        --parallel 5 --override images_per_batch=2 --override crops_per_image=16

Every variant (the full model and one per overlay file in ``configs/ablations``: basicunet, no_gdam, plain,
respath; see ``scripts.benchmark_training.VARIANTS``) runs the bundle's own training command with the same
overrides, epochs and split, then ``configs/evaluate.json`` on its best checkpoint (``<output_dir>/<variant>/models``).
``<output_dir>/ablations.json`` holds each variant's parameters and evaluation summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import BUNDLE_ROOT  # noqa: E402
from scripts.benchmark_training import VARIANTS, build, width_overrides  # noqa: E402

META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]


def _config_list(variant: str, extra: List[str]) -> str:
    files = ["configs/train.json", *VARIANTS[variant], *extra]
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def _launch(variant: str, stage: str, args: argparse.Namespace) -> subprocess.Popen:
    out = Path(args.output_dir) / variant
    out.mkdir(parents=True, exist_ok=True)
    common = [*META, "--dataset_dir", args.dataset_dir, "--ckpt_dir", str(out / "models"), "--epochs", str(args.epochs)]
    common += [f"--{k}={v}" for k, v in (o.split("=", 1) for o in args.override)]
    common += [f"--{k}={json.dumps(v)}" for k, v in width_overrides(variant, args.width).items()]
    if stage == "train":
        cmd = ["training", "--config_file", _config_list(variant, []), "--output_dir", str(out), "--val_interval", str(args.val_interval)]
    else:
        cmd = ["--config_file", _config_list(variant, ["configs/evaluate.json"]), "--output_dir", str(out / "eval")]
    log = open(out / f"{stage}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *cmd, *common], cwd=BUNDLE_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _run_all(variants: List[str], stage: str, args: argparse.Namespace) -> Dict[str, int]:
    pending, running, codes = list(variants), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            v = pending.pop(0)
            running[v] = _launch(v, stage, args)
        for v, proc in list(running.items()):
            if proc.poll() is not None:
                codes[v] = proc.returncode
                del running[v]
        time.sleep(1)
    return codes


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--output_dir", default="runs/ablations")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--val_interval", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    parser.add_argument("--override", action="append", default=[], help="config id=value, repeatable")
    parser.add_argument("--width", type=int, default=None, help="scale every network to this first-level width (CPU budgets)")
    parser.add_argument("--report_only", action="store_true", help="only tabulate the evaluations already in output_dir")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    t0 = time.time()
    if args.report_only:
        train_codes = {v: 0 for v in variants}
        eval_codes = {v: 0 if (Path(args.output_dir) / v / "eval" / "metrics_summary.json").is_file() else None for v in variants}
    else:
        train_codes = _run_all(variants, "train", args)
        trained = [v for v in variants if train_codes[v] == 0]
        eval_codes = _run_all(trained, "eval", args)
    results = {}
    for v in variants:
        summary = Path(args.output_dir) / v / "eval" / "metrics_summary.json"
        results[v] = {
            "parameters": sum(p.numel() for p in build(v, torch.device("cpu"), args.width).parameters() if p.requires_grad),
            "train_rc": train_codes.get(v),
            "eval_rc": eval_codes.get(v),
            **(json.loads(summary.read_text()) if summary.is_file() else {}),
        }
    Path(args.output_dir, "ablations.json").write_text(json.dumps({"epochs": args.epochs, "width": args.width, "overrides": args.override, "results": results}, indent=2))
    print(f"{len(variants)} variants, {args.epochs} epochs each, width {args.width or 'config'}, {time.time() - t0:.0f} s")
    print("| variant | parameters | mean Dice | mean IoU | pooled Dice |")
    print("|---|---:|---:|---:|---:|")
    for v, r in results.items():
        dice = f"{r['mean_dice']:.4f}" if "mean_dice" in r else f"failed (rc {r['train_rc']}/{r['eval_rc']})"
        print(f"| {v} | {r['parameters'] / 1e6:.2f} M | {dice} | {r.get('mean_iou', float('nan')):.4f} | {r.get('pooled_dice', float('nan')):.4f} |")
    return 0 if all(c == 0 for c in train_codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
