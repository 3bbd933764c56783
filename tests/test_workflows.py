"""End-to-end: the bundle's real command lines on the shipped crops (CPU, light network).

Training with MLflow tracking, inference on a folder of good and bad images, evaluation, kill-and-resume,
logging to a real ``mlflow server``, and two-process training with torchrun (gloo backend).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from bundle.training.checkpoints import find_last_checkpoint
from bundle.config_io import load_config
from tests.helpers import LIGHT_OVERRIDES, MONUSEG, ROOT, cli_overrides, make_bad_image_folder

PY = sys.executable
META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
TRAIN = ["--config_file", "configs/train.json"]
FAST = {**LIGHT_OVERRIDES, "num_workers": 0, "val_interval": 1, "crops_per_image": 2}
LEARNING_RATE = str(load_config("train")["learning_rate"])


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bundle_run(args, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run ...`` from the bundle root and return the finished process."""
    proc = subprocess.run(
        [PY, "-m", "monai.bundle", "run", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train_args(out: Path, epochs: int, **extra) -> list:
    overrides = {**FAST, "dataset_dir": MONUSEG, "output_dir": out, "ckpt_dir": out / "models", "epochs": epochs, **extra}
    return ["training", *TRAIN, *META, *cli_overrides(overrides)]


def mlflow_runs(tracking_uri: str, experiment: str = "pathology_nuclei_segmentation_grunet"):
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} at {tracking_uri}"
    return client, client.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the light network for 2 epochs with MLflow tracking into the default sqlite store."""
    out = tmp_path_factory.mktemp("train")
    proc = bundle_run(train_args(out, epochs=2) + ["--tracking", "mlflow"])
    return out, proc


def test_training_writes_checkpoints_and_mlflow_run(trained):
    out, proc = trained
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)  # a plain state dict (MONAI saves a single object so) or {"model": ...}
    assert "text_prior" in state and "head.weight" in state
    last = torch.load(out / "checkpoints" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]  # ignite keeps epochs as iterations

    client, runs = mlflow_runs(f"sqlite:///{out}/mlruns.db")
    train_run = [r for r in runs if "train_loss" in r.data.metrics][0]
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) >= 2  # per iteration
    assert train_run.data.params["learning_rate"] == LEARNING_RATE
    assert train_run.data.params["features"] == "8" and train_run.data.params["max_epochs"] == "2"
    assert any("val_mean_dice" in r.data.metrics for r in runs)
    artifacts = [a.path for a in client.list_artifacts(train_run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)


def test_inference_on_good_and_bad_images(trained, tmp_path):
    """The README's main job on a folder mixing good and bad inputs: the good ones get every file, the bad
    ones are named in report.json, the exit status says that some were skipped."""
    out, _ = trained
    inputs = make_bad_image_folder(tmp_path / "in")
    overrides = {**LIGHT_OVERRIDES, "dataset_dir": tmp_path / "in", "output_dir": tmp_path / "out", "ckpt_dir": out / "models"}
    proc = bundle_run(["--config_file", "configs/inference.json", *META, *cli_overrides(overrides)], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]  # bundle.errors.EXIT_SKIPPED
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    names = {Path(s["input"]).name: s["name"] for s in report["written"]}
    assert set(names) == {"good.png", "small.png", "gray.png", "rgba.png", "tile.tif", "tile.jpg"}
    assert {Path(s["input"]).name for s in report["skipped"]} == {"corrupt.png", "sixteen.png"}
    assert [Path(s["input"]).name for s in report["ignored"]] == ["notes.txt"]
    assert {Path(c["input"]).name for c in report["conversions"]} == {"gray.png", "rgba.png"}
    for kind in ("good", "small", "gray", "rgba"):
        src = Image.open(inputs[kind])
        name = names[inputs[kind].name]
        folder = tmp_path / "out" / name
        seg = np.asarray(Image.open(folder / f"{name}_seg.png"))
        assert seg.shape == (src.height, src.width) and seg.dtype == np.uint8
        assert set(np.unique(seg)) <= {0, 255}
        overlay = Image.open(folder / f"{name}_overlay.png")
        assert overlay.size == src.size and overlay.mode == "RGB"
        for suffix in ("_instances.tif", ".geojson", "_nuclei.csv", "_summary.json"):
            assert (folder / f"{name}{suffix}").is_file(), suffix
    assert names["tile.tif"] == "tile_tif" and names["tile.jpg"] == "tile_jpg"  # same stem, two formats: both kept
    assert "grayscale image replicated to RGB" in proc.stderr + proc.stdout
    assert "sixteen.png" in proc.stdout + proc.stderr


def test_evaluate_writes_csv_json_and_logs_mlflow(trained, tmp_path):
    out, _ = trained
    overrides = {**FAST, "dataset_dir": MONUSEG, "ckpt_dir": out / "models", "output_dir": tmp_path, "eval_split": "all"}
    bundle_run(["--config_file", "['configs/train.json','configs/evaluate.json']", *META, *cli_overrides(overrides), "--tracking", "mlflow"])
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    header = "image,dataset,organ,tp,fp,fn,tn,dice,iou,precision,recall,aji,pq,dq,sq,f1,count_ratio,n_true,n_pred"
    assert rows[0] == header and len(rows) == 5
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert summary["num_images"] == 4 and summary["mean_count_ratio"] > 0
    assert set(summary["by_dataset"]) == {"monuseg"} and set(summary["by_organ"]) == {"generic"}
    assert summary["by_dataset"]["monuseg"]["mean_dice"] == pytest.approx(summary["mean_dice"])
    for key in ("mean_dice", "mean_iou", "mean_precision", "mean_recall", "pooled_dice", "mean_aji", "mean_pq", "mean_dq", "mean_sq", "mean_f1"):
        assert 0.0 <= summary[key] <= 1.0
    _, runs = mlflow_runs(f"sqlite:///{tmp_path}/mlruns.db")
    assert any(r.data.metrics.get("mean_dice") == pytest.approx(summary["mean_dice"]) for r in runs)


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    epochs = 5
    cmd = [PY, "-m", "monai.bundle", "run", *train_args(tmp_path, epochs=epochs)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a checkpoint being written is incomplete
        while find_last_checkpoint(checkpoints) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # possibly in the middle of writing the next checkpoint
        proc.wait()
        last_complete = find_last_checkpoint(checkpoints)
    assert last_complete is not None and proc.returncode == -signal.SIGKILL
    killed_at = int(Path(last_complete).stem.split("=")[-1])
    assert killed_at < epochs

    resumed = bundle_run(train_args(tmp_path, epochs=epochs, resume="true"))
    log = resumed.stdout + resumed.stderr
    assert f"Restored all variables from {checkpoints / f'checkpoint_epoch={killed_at}.pt'}" in log
    assert f"Epoch: {killed_at}/{epochs}" not in log  # finished epochs are not trained again
    assert f"Epoch: {killed_at + 1}/{epochs}" in log
    assert "resumed best-model tracking from" in log  # a worse model does not replace the best one
    last = torch.load(checkpoints / f"checkpoint_epoch={epochs}.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == epochs * last["trainer"]["epoch_length"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [PY, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "artifacts")],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(server.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_training_logs_to_a_real_mlflow_server(mlflow_server, tmp_path):
    bundle_run(train_args(tmp_path, epochs=1) + ["--tracking", "mlflow", "--tracking_uri", mlflow_server])
    client, runs = mlflow_runs(mlflow_server)
    train_run = [r for r in runs if "train_loss" in r.data.metrics][0]
    assert train_run.data.params["learning_rate"] == LEARNING_RATE
    assert "val_mean_dice" in {k for r in runs for k in r.data.metrics}
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to the local default store


def test_multi_gpu_config_with_torchrun_two_cpu_processes(tmp_path):
    overrides = {**FAST, "dataset_dir": MONUSEG, "output_dir": tmp_path, "ckpt_dir": tmp_path / "models", "epochs": 1, "val_fraction": 0.5}
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "training",
           "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", *META, *cli_overrides(overrides),
           "--tracking", "mlflow", "--tracking_uri", f"sqlite:///{tmp_path}/mlruns.db"]  # MLflow's handler is appended last
    env = dict(_env(), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert log.count("SupervisedTrainer - INFO - Engine run complete") == 2  # both ranks trained
    assert log.count("Saved checkpoint at epoch: 1") == 1  # rank 0 alone saved
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_epoch=1.pt"]
    records = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    keys = [(r["event"], r["epoch"], r.get("iteration")) for r in records]
    assert len(keys) == len(set(keys)) and keys.count(("epoch", 1, None)) == 1, "rank 0 alone writes the history"
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    assert not any(k.startswith("module.") for k in state)  # the DDP wrapper is not in the saved weights


def test_missing_dataset_dir_is_named(tmp_path):
    proc = bundle_run(train_args(tmp_path, epochs=1, dataset_dir=tmp_path / "nowhere"), check=False)
    assert proc.returncode != 0
    assert f"dataset_dir does not exist: {tmp_path / 'nowhere'}" in proc.stderr
