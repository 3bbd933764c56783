"""Load a training curve (``history.jsonl``) into an MLflow run, for training done where MLflow was not installed.

    python scripts/mlflow_import_history.py runs/train/history.jsonl --tracking_uri sqlite:///runs/mlruns.db \\
        --run_name grunet_monuseg --param learning_rate=0.0005 --param epochs=90

Per-iteration ``loss`` and ``lr`` are logged at their iteration, epoch metrics (``train_dice``,
``val_mean_dice``, ...) at their epoch, as MONAI's MLflow handler does; the history file itself is an artifact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.plot_history import read_history  # noqa: E402


def import_history(history: str, tracking_uri: str, experiment: str, run_name: str, params: dict) -> str:
    """Create a run holding the history's metrics; returns the run id."""
    iterations, epochs = read_history(history)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name)
    now = int(time.time() * 1000)
    metrics = []
    for r in iterations:
        for key, name in (("loss", "train_loss"), ("lr", "lr")):
            if r.get(key) is not None:
                metrics.append(mlflow.entities.Metric(name, float(r[key]), now, int(r["iteration"])))
    for r in epochs:
        for key, value in r.items():
            if key not in ("event", "epoch") and isinstance(value, (int, float)):
                metrics.append(mlflow.entities.Metric(key, float(value), now, int(r["epoch"])))
    for i in range(0, len(metrics), 900):  # MLflow accepts at most 1000 metrics a batch
        client.log_batch(run.info.run_id, metrics=metrics[i : i + 900])
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    client.log_artifact(run.info.run_id, history)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history")
    parser.add_argument("--tracking_uri", required=True)
    parser.add_argument("--experiment", default="pathology_nuclei_segmentation_grunet")
    parser.add_argument("--run_name", default="imported_history")
    parser.add_argument("--param", action="append", default=[], help="key=value, repeatable")
    args = parser.parse_args(argv)
    params = dict(p.split("=", 1) for p in args.param)
    run_id = import_history(args.history, args.tracking_uri, args.experiment, args.run_name, params)
    print(f"run {run_id} in {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
