"""Plot a training curve from ``history.jsonl`` (written by ``bundle.training.tracking.TrainingHistory``) to a PNG.

    python scripts/plot_history.py runs/train/history.jsonl docs/training_curve.png
    python scripts/plot_history.py runs/a/history.jsonl runs/b/history.jsonl curves.png --labels a,b   # on the same axes
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_history(path: str) -> Tuple[List[Dict], List[Dict]]:
    """(iteration records, epoch records) of a history file; a resumed run's repeated epochs keep the last.

    A file ending in ``.gz`` is read through gzip (the histories committed under ``docs/`` are compressed).
    """
    iterations: Dict[int, Dict] = {}
    epochs: Dict[int, Dict] = {}
    text = gzip.decompress(Path(path).read_bytes()).decode() if str(path).endswith(".gz") else Path(path).read_text()
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record["event"] == "iteration":
            iterations[record["iteration"]] = record
        elif record["event"] == "epoch":
            epochs[record["epoch"]] = record
    return [iterations[k] for k in sorted(iterations)], [epochs[k] for k in sorted(epochs)]


EXTRA_COLORS = ("black", "gold", "lime", "navy")  # for runs beyond matplotlib's ten-colour cycle


def run_color(n: int) -> str:
    """The colour of the n-th run: matplotlib's cycle ``C0``-``C9``, then ``EXTRA_COLORS``."""
    return f"C{n}" if n < 10 else EXTRA_COLORS[(n - 10) % len(EXTRA_COLORS)]


def plot(histories: List[str], output: str, title: str = "GRU-Net training", labels: Optional[List[str]] = None) -> None:
    """Loss per iteration (left) and Dice per epoch (right) of one run, or of several runs on the same axes.

    Args:
        histories: ``history.jsonl`` files.
        output: PNG to write.
        title: the figure's title.
        labels: one name per history (default: the history's folder name); shown when there are several.
    """
    labels = labels or [Path(h).parent.name for h in histories]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories")
    several = len(histories) > 1
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4 + (0.45 * len(histories) if several else 0)))
    for n, (history, label) in enumerate(zip(histories, labels)):
        iterations, epochs = read_history(history)
        name = f"{label}: " if several else ""
        it = np.array([r["iteration"] for r in iterations])
        loss = np.array([r["loss"] for r in iterations], dtype=float)
        if not several:
            ax_loss.plot(it, loss, color="0.75", lw=0.8, label="per iteration")
        if len(loss) >= 20:
            k = max(5, len(loss) // 50)
            ax_loss.plot(it[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), color=run_color(n) if several else "C0", label=f"{name}mean of {k}")
        ep = [r["epoch"] for r in epochs if "train_dice" in r]
        ax_dice.plot(ep, [r["train_dice"] for r in epochs if "train_dice" in r], "--" if several else "-",
                     color=run_color(n) if several else "C1", label=f"{name}train Dice (patches)")
        val = [(r["epoch"], r["val_mean_dice"]) for r in epochs if "val_mean_dice" in r]
        if val:
            ax_dice.plot(*zip(*val), "o-", color=run_color(n) if several else "C2", label=f"{name}validation Dice (whole images)")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    below = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.15)} if several else {}  # off the curves
    ax_loss.legend(**below)
    ax_loss.grid(alpha=0.3)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.legend(**below)
    ax_dice.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", nargs="+", help="history.jsonl files; several are drawn on the same axes")
    parser.add_argument("output")
    parser.add_argument("--title", default="GRU-Net training")
    parser.add_argument("--labels", default=None, help="comma-separated names of the histories (default: their folders)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.history):
        parser.error(f"--labels: {len(labels)} names for {len(args.history)} histories")
    plot(args.history, args.output, args.title, labels)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
