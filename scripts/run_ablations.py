"""Train and evaluate GRU-Net's ablations at one matched budget on one split, and print the table.

    python scripts/run_ablations.py --dataset_dir <monuseg>/train --output_dir runs/ablations --epochs 10 \\
        --parallel 5 --override images_per_batch=2 --override crops_per_image=16
    python scripts/run_ablations.py --configs configs/monuseg_tnbc.json --override data_root=<data> --output_dir runs/ablations14 \\
        --variants compact,compact+constant_prior,compact+no_gdam,basicunet --eval_generic compact --epochs 10

A variant is the full model or overlays joined by ``+``: ``compact`` (``configs/compact.json``) and one per file in
``configs/ablations`` (basicunet, constant_prior, no_gdam, plain, respath; see
``scripts.benchmark_training.VARIANTS``). Each runs the bundle's own training command (``configs/train.json``, then
``--configs``, then its overlays) with the same overrides, epochs and split, then ``configs/evaluate.json`` on its
best checkpoint (``<output_dir>/<variant>/models``); ``--eval_generic`` variants are evaluated a second time with
every image given the generic prompts (``<variant>/eval_generic``). ``<output_dir>/ablations.json`` holds each
variant's parameters and evaluation summary (with its per-dataset and per-organ breakdown).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import BUNDLE_ROOT, load_config  # noqa: E402
from scripts.benchmark_training import VARIANTS, width_overrides  # noqa: E402

META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]


def overlays_of(variant: str) -> List[str]:
    """The overlay files of a variant: the overlays of each ``+``-joined part, in order.

    Raises:
        KeyError: a part that is not in :data:`VARIANTS`.
    """
    files: List[str] = []
    for part in variant.split("+"):
        if part not in VARIANTS:
            raise KeyError(f"unknown variant {part!r}; choose from {list(VARIANTS)}")
        files += VARIANTS[part]
    return files


def _config_list(variant: str, args: argparse.Namespace, extra: List[str]) -> str:
    """The configs of one stage: ``extra`` (``configs/evaluate.json``) before the variant's overlays, so that a
    variant's own splitting (``configs/compact.json``'s marker height and smoothing) wins, as in the model card's
    evaluation command."""
    files = ["configs/train.json", *args.configs, *extra, *overlays_of(variant)]
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def _launch(variant: str, stage: str, args: argparse.Namespace) -> subprocess.Popen:
    out = Path(args.output_dir) / variant
    out.mkdir(parents=True, exist_ok=True)
    common = [*META, "--ckpt_dir", str(out / "models"), "--epochs", str(args.epochs)]
    common += ["--dataset_dir", args.dataset_dir] if args.dataset_dir else []
    common += [f"--{k}={v}" for k, v in (o.split("=", 1) for o in args.override)]
    common += [f"--{k}={json.dumps(v)}" for k, v in width_overrides(variant.split("+")[0], args.width).items()]
    if stage == "train":
        resume = (out / "checkpoints").is_dir()  # a cut run goes on from its last epoch
        cmd = ["training", "--config_file", _config_list(variant, args, []), "--output_dir", str(out),
               "--val_interval", str(args.val_interval), "--resume", str(resume)]
    else:
        (out / stage / "metrics_summary.json").unlink(missing_ok=True)  # a failed evaluation never reports an earlier one
        cmd = ["--config_file", _config_list(variant, args, ["configs/evaluate.json"]), "--output_dir", str(out / stage)]
        cmd += ["--validation_generic_prob", "1.0"] if stage == "eval_generic" else []
    log = open(out / f"{stage}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *cmd, *common], cwd=BUNDLE_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _parsed_overrides(pairs: List[str]) -> Dict[str, object]:
    """``id=value`` pairs as the bundle CLI reads them: JSON values (numbers, lists, booleans), else strings."""
    parsed: Dict[str, object] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _epochs_trained(history: Path) -> Optional[int]:
    """The last epoch in a run's ``history.jsonl`` (a run cut by ``training_minutes`` trained fewer than asked)."""
    if not history.is_file():
        return None
    epochs = []
    for line in history.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line half-written when the run was stopped
            continue
        if record.get("event") == "epoch":
            epochs.append(record.get("epoch", 0))
    return max(epochs, default=0)


def _row(name: str, summary: Dict) -> str:
    """One table row: means over all validation images, then Dice and AJI per data set."""
    if "mean_dice" not in summary:
        return f"| {name} | failed |"
    cells = [f"{summary.get(k, float('nan')):.4f}" for k in ("mean_dice", "mean_aji", "mean_pq", "mean_f1", "pooled_count_ratio")]
    for group, values in summary.get("by_dataset", {}).items():
        cells.append(f"{group} {values['mean_dice']:.4f} / {values.get('mean_aji', float('nan')):.4f}")
    return f"| {name} | {summary['parameters'] / 1e6:.2f} M | {summary.get('epochs_trained')} | " + " | ".join(cells) + " |"


def _run_all(variants: List[str], generic: List[str], args: argparse.Namespace) -> Dict[str, int]:
    """Train each variant, ``args.parallel`` runs at a time, and evaluate each as soon as its training succeeded
    (then with the generic prompts if it is in ``generic``); return the training exit codes. A run stopped by
    SIGTERM (``timeout``) stops the runs it started and keeps the evaluations finished by then."""
    pending = [(v, "train") for v in variants]
    running: Dict[tuple, subprocess.Popen] = {}
    codes: Dict[str, int] = {}
    try:
        while pending or running:
            while pending and len(running) < args.parallel:
                job = pending.pop(0)
                running[job] = _launch(*job, args)
            for (v, stage), proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[(v, stage)]
                if stage == "train":
                    codes[v] = proc.returncode
                    if proc.returncode == 0:  # evaluations go first: a cut run keeps finished rows
                        pending[:0] = [(v, "eval")] + ([(v, "eval_generic")] if v in generic else [])
            time.sleep(1)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return codes


def _stop(signum: int, frame) -> None:
    """SIGTERM: leave through ``finally`` (stopping the runs started), once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=None, help="the data set (or leave to a --configs overlay)")
    parser.add_argument("--configs", action="append", default=[], help="config overlay merged after train.json, repeatable")
    parser.add_argument("--eval_generic", default="", help="variants also evaluated with the generic prompts, comma-separated")
    parser.add_argument("--output_dir", default="runs/ablations")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--val_interval", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    parser.add_argument("--override", action="append", default=[], help="config id=value, repeatable")
    parser.add_argument("--width", type=int, default=None, help="scale every network to this first-level width (CPU budgets)")
    parser.add_argument("--report_only", action="store_true", help="only tabulate the evaluations already in output_dir")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    variants = [v for v in args.variants.split(",") if v]
    generic = [v for v in args.eval_generic.split(",") if v]
    t0 = time.time()
    if args.report_only:
        train_codes = {v: 0 for v in variants}
    else:
        train_codes = _run_all(variants, generic, args)
    results = {}
    for name, variant, stage in [(v, v, "eval") for v in variants] + [(f"{v} (generic prompts)", v, "eval_generic") for v in generic]:
        summary = Path(args.output_dir) / variant / stage / "metrics_summary.json"
        overrides = {**_parsed_overrides(args.override), **width_overrides(variant.split("+")[0], args.width)}
        config = load_config(["train", *[str(BUNDLE_ROOT / f) for f in args.configs + overlays_of(variant)]], overrides=overrides)
        results[name] = {
            "parameters": sum(p.numel() for p in config.get_parsed_content("network_def").parameters() if p.requires_grad),
            "train_rc": train_codes.get(variant),
            "epochs_trained": _epochs_trained(Path(args.output_dir) / variant / "history.jsonl"),
            "seed": config["seed"],  # the training draw
            "split_seed": config["split_seed"],  # the validation images (scripts/summarize_ablations.py groups by it)
            **(json.loads(summary.read_text()) if summary.is_file() else {}),
        }
    report = {"epochs": args.epochs, "width": args.width, "configs": args.configs, "overrides": args.override, "results": results}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "ablations.json").write_text(json.dumps(report, indent=2))
    print(f"{len(variants)} variants, {args.epochs} epochs each, width {args.width or 'config'}, {time.time() - t0:.0f} s")
    print("| variant | parameters | epochs | Dice | AJI | PQ | F1 | count ratio | per data set: Dice / AJI |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        print(_row(name, r))
    return 0 if len(train_codes) == len(variants) and all(c == 0 for c in train_codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
