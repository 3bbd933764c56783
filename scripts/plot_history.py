"""Plot a training curve from ``history.jsonl`` (written by ``bundle.training.tracking.TrainingHistory``) to a PNG.

    python scripts/plot_history.py runs/train/history.jsonl docs/training_curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_history(path: str) -> Tuple[List[Dict], List[Dict]]:
    """(iteration records, epoch records) of a history file; a resumed run's repeated epochs keep the last."""
    iterations: Dict[int, Dict] = {}
    epochs: Dict[int, Dict] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record["event"] == "iteration":
            iterations[record["iteration"]] = record
        elif record["event"] == "epoch":
            epochs[record["epoch"]] = record
    return [iterations[k] for k in sorted(iterations)], [epochs[k] for k in sorted(epochs)]


def plot(history: str, output: str, title: str = "GRU-Net training") -> None:
    iterations, epochs = read_history(history)
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    it = np.array([r["iteration"] for r in iterations])
    loss = np.array([r["loss"] for r in iterations], dtype=float)
    ax_loss.plot(it, loss, color="0.75", lw=0.8, label="per iteration")
    if len(loss) >= 20:
        k = max(5, len(loss) // 50)
        ax_loss.plot(it[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("Dice + BCE loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ep = [r["epoch"] for r in epochs if "train_dice" in r]
    ax_dice.plot(ep, [r["train_dice"] for r in epochs if "train_dice" in r], color="C1", label="train Dice (patches)")
    val = [(r["epoch"], r["val_mean_dice"]) for r in epochs if "val_mean_dice" in r]
    if val:
        ax_dice.plot(*zip(*val), "o-", color="C2", label="validation Dice (whole images)")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.legend()
    ax_dice.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history")
    parser.add_argument("output")
    parser.add_argument("--title", default="GRU-Net training")
    args = parser.parse_args(argv)
    plot(args.history, args.output, args.title)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
