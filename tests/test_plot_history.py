"""``scripts/plot_history.py``: one run's curves, or several runs on the same axes, from ``history.jsonl``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from PIL import Image

from scripts.plot_history import EXTRA_COLORS, main, read_history, run_color


def _history(path: Path, epochs: int = 4, iterations_per_epoch: int = 10) -> Path:
    """A ``history.jsonl`` as training writes it (a resumed epoch written twice), validated every other epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for epoch in range(1, epochs + 1):
        for i in range(iterations_per_epoch):
            lines.append({"event": "iteration", "epoch": epoch, "iteration": (epoch - 1) * iterations_per_epoch + i + 1, "loss": 1.0 / epoch})
        record = {"event": "epoch", "epoch": epoch, "train_dice": 0.1 * epoch}
        if epoch % 2 == 0:
            record["val_mean_dice"] = 0.15 * epoch
        lines.append(record)
    lines.append(lines[-1])  # a resume repeats the last epoch
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_read_history_keeps_one_record_per_epoch(tmp_path):
    iterations, epochs = read_history(str(_history(tmp_path / "a" / "history.jsonl")))
    assert len(iterations) == 40 and [r["epoch"] for r in epochs] == [1, 2, 3, 4]


def test_read_history_reads_a_gzipped_history_as_the_plain_one(tmp_path):
    plain = _history(tmp_path / "a" / "history.jsonl")
    packed = tmp_path / "docs" / "history_a.jsonl.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_history(str(packed)) == read_history(str(plain))


@pytest.mark.parametrize("n, color", [(0, "C0"), (9, "C9"), (10, EXTRA_COLORS[0]), (10 + len(EXTRA_COLORS), EXTRA_COLORS[0])])
def test_run_color_extends_the_ten_colour_cycle(n, color):
    assert run_color(n) == color
    assert len({run_color(i) for i in range(10 + len(EXTRA_COLORS))}) == 10 + len(EXTRA_COLORS)  # no two runs share a colour


@pytest.mark.parametrize(
    "runs, labels, size",
    [
        (["a"], None, (1210, 440)),
        (["a", "b"], None, (1210, 539)),  # several: the legends go below the axes, 0.45 inch taller per run
        (["a", "b"], "scratch,distilled", (1210, 539)),
    ],
)
def test_plot_writes_a_png(tmp_path, runs, labels, size):
    histories = [str(_history(tmp_path / run / "history.jsonl")) for run in runs]
    out = tmp_path / "curve.png"
    assert main([*histories, str(out), *(["--labels", labels] if labels else [])]) == 0
    assert Image.open(out).size == size


def test_labels_must_match_the_histories(tmp_path, capsys):
    histories = [str(_history(tmp_path / run / "history.jsonl")) for run in ("a", "b")]
    with pytest.raises(SystemExit) as stop:
        main([*histories, str(tmp_path / "curve.png"), "--labels", "only_one"])
    assert stop.value.code == 2 and "--labels: 1 names for 2 histories" in capsys.readouterr().err
