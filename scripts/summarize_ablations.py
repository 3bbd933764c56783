"""Tabulate ``scripts/run_ablations.py`` reports over seeds and validation splits, with each network's margin over a yardstick.

    python scripts/summarize_ablations.py docs/ablations/*.json --yardstick basicunet

Each result in an ``ablations.json`` is one training run: a variant, its ``seed`` (the training draw: initialisation,
crops, augmentation) and its ``split_seed`` (which images are held out for validation). The script prints three
tables: every run; per variant and split, the mean over seeds with the range; and each variant's margin over the
yardstick, as the difference of the two means on every split that both were trained on and the mean of those
differences. Reports written before ``split_seed`` existed (0.7.10) carry neither field: their ``overrides`` give them
(0 where absent; ``scripts/run_ablations.py --report_only`` with the right overrides rewrites such a report).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.run_ablations import _parsed_overrides  # noqa: E402

SUMMARY_METRICS = (("Dice", "mean_dice"), ("AJI", "mean_aji"), ("PQ", "mean_pq"), ("F1", "mean_f1"), ("count ratio", "pooled_count_ratio"))
DATASET_METRICS = (("Dice", "mean_dice"), ("AJI", "mean_aji"))


@dataclass
class Run:
    """One trained and evaluated variant: where it came from, its two seeds and its flat metrics."""

    variant: str
    seed: int
    split_seed: int
    metrics: Dict[str, float]
    source: str


def flat_metrics(result: Dict) -> Dict[str, float]:
    """A result's summary metrics and, per data set, Dice and AJI as ``"<dataset> Dice"``."""
    metrics = {name: float(result[key]) for name, key in SUMMARY_METRICS if key in result}
    for dataset, values in result.get("by_dataset", {}).items():
        metrics.update({f"{dataset} {name}": float(values[key]) for name, key in DATASET_METRICS if key in values})
    return metrics


def read_runs(paths: Sequence[str]) -> List[Run]:
    """The evaluated runs of the reports; a later report's run replaces an earlier one of the same variant and seeds."""
    runs: Dict[Tuple[str, int, int], Run] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: not a readable ablations report ({e})")
        overrides = _parsed_overrides(report.get("overrides", []))
        for variant, result in report.get("results", {}).items():
            if "mean_dice" not in result:
                print(f"{path}: {variant} has no evaluation, skipped", file=sys.stderr)
                continue
            seed = result.get("seed", overrides.get("seed", 0))
            split_seed = result.get("split_seed", overrides.get("split_seed", 0))
            key = (variant, seed, split_seed)
            if key in runs:
                print(f"{path}: {variant} seed {seed} split {split_seed} replaces the run from {runs[key].source}", file=sys.stderr)
            runs[key] = Run(variant, seed, split_seed, flat_metrics(result), str(path))
    return sorted(runs.values(), key=lambda r: (r.variant, r.split_seed, r.seed))


def group_by_split(runs: Sequence[Run]) -> Dict[Tuple[str, int], Dict[str, List[float]]]:
    """Per (variant, split_seed): every metric's values over the seeds, in seed order."""
    groups: Dict[Tuple[str, int], Dict[str, List[float]]] = {}
    for run in runs:
        group = groups.setdefault((run.variant, run.split_seed), {})
        for name, value in run.metrics.items():
            group.setdefault(name, []).append(value)
    return groups


def margins(groups: Dict[Tuple[str, int], Dict[str, List[float]]], yardstick: str, names: Sequence[str]) -> Dict[str, Dict[int, Dict[str, float]]]:
    """Per variant and split both share with the yardstick: the variant's mean minus the yardstick's, per metric."""
    result: Dict[str, Dict[int, Dict[str, float]]] = {}
    for (variant, split), values in groups.items():
        base = groups.get((yardstick, split))
        if variant == yardstick or base is None:
            continue
        common = [n for n in names if n in values and n in base]
        result.setdefault(variant, {})[split] = {n: mean(values[n]) - mean(base[n]) for n in common}
    return result


def _range(values: List[float]) -> str:
    """``mean`` for one value, ``mean (min-max)`` for several."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _datasets(runs: Sequence[Run]) -> List[str]:
    """The data sets the runs report (their ``"<dataset> Dice"`` metrics), in first-seen order."""
    names: List[str] = []
    for run in runs:
        for key in run.metrics:
            dataset, _, metric = key.rpartition(" ")
            if metric == "Dice" and dataset and dataset not in names:
                names.append(dataset)
    return names


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="ablations.json files written by scripts/run_ablations.py")
    parser.add_argument("--yardstick", default="basicunet", help="the variant every other one is compared with")
    args = parser.parse_args(argv)
    runs = read_runs(args.reports)
    datasets = _datasets(runs)
    per_dataset = [f"{d} {m}" for d in datasets for m in ("Dice", "AJI")]

    print("| variant | split | seed | " + " | ".join(n for n, _ in SUMMARY_METRICS) + " | " + " | ".join(per_dataset) + " | report |")
    print("|---|---:|---:|" + "---:|" * (len(SUMMARY_METRICS) + len(per_dataset)) + "---|")
    for run in runs:
        cells = [f"{run.metrics[n]:.3f}" if n in run.metrics else "" for n in [n for n, _ in SUMMARY_METRICS] + per_dataset]
        print(f"| {run.variant} | {run.split_seed} | {run.seed} | " + " | ".join(cells) + f" | {run.source} |")

    groups = group_by_split(runs)
    shown = ["Dice", "AJI", "PQ", *per_dataset]
    print("\n| variant | split | seeds | " + " | ".join(f"{n}, mean (range)" if n in ("Dice", "AJI") else n for n in shown) + " |")
    print("|---|---:|---|" + "---:|" * len(shown))
    for (variant, split), values in sorted(groups.items()):
        seeds = ",".join(str(r.seed) for r in runs if (r.variant, r.split_seed) == (variant, split))
        cells = [(_range(values[n]) if n in ("Dice", "AJI") else f"{mean(values[n]):.3f}") if n in values else "" for n in shown]
        print(f"| {variant} | {split} | {seeds} | " + " | ".join(cells) + " |")

    compared = ["Dice", "AJI", *per_dataset]
    table = margins(groups, args.yardstick, compared)
    if table:
        print(f"\nMargin over {args.yardstick} (difference of the means over seeds; + is ahead):")
        print("| variant | split | " + " | ".join(f"Δ {n}" for n in compared) + " |")
        print("|---|---|" + "---:|" * len(compared))
        for variant, by_split in sorted(table.items()):
            rows = [(str(s), d) for s, d in sorted(by_split.items())]
            if len(by_split) > 1:
                names = [n for n in compared if all(n in d for d in by_split.values())]
                rows.append((f"mean of {len(by_split)}", {n: mean(d[n] for d in by_split.values()) for n in names}))
            for split, diff in rows:
                print(f"| {variant} | {split} | " + " | ".join(f"{diff[n]:+.3f}" if n in diff else "" for n in compared) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
