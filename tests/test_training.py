"""Training: where it writes, resuming (warning, history without duplicates), one-line errors for bad inputs,
the throughput benchmark of the ablations, and the metadata's description of the network's output.

CPU only and small: the shipped 256x256 crops (``sample_data/monuseg``), a narrow network, 64x64 patches, one
thread per process (the machine's cores are shared).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from parameterized import parameterized

from bundle.config_io import BUNDLE_ROOT, config_path, load_config
from bundle.data.datalists import DatasetNotAFolderError, DatasetNotFoundError, paired_datalist, split_datalist
from bundle.errors import InputError
from bundle.training.checkpoints import CheckpointNotFoundError, load_state_dict, load_torch_file, restore_best_metric
from bundle.training.tracking import DROPPED, HISTORY, PREVIOUS, truncate_history
from scripts import benchmark_training
from tests.helpers import MONUSEG, ROOT, cli_overrides

PY = sys.executable
META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
OVERLAY = "monailabel/app/grunet_label/train_overlay.json"
TINY = {
    "network_def#features": 8,
    "network_def#cdrb_units": 2,
    "patch_size": [64, 64],
    "num_workers": 0,
    "crops_per_image": 1,
    "images_per_batch": 2,
    "val_interval": 2,
}


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bundle_run(args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "monai.bundle", "run", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bundle run failed ({proc.returncode}):\n{log[-6000:]}"
    return log


# -- where training writes --------------------------------------------------------------------------------------
CKPT_DIR_CASES = [
    # configs, expected folder of model.pt (relative to the bundle root; "<out>" is the --output_dir)
    ("train", ["train"], "<out>/models"),
    ("multi_gpu", ["train", "multi_gpu_train"], "<out>/models"),
    ("evaluate", ["train", "evaluate"], "models"),
    ("monailabel", ["train", OVERLAY], "models"),
]


@parameterized.expand(CKPT_DIR_CASES)
def test_model_pt_folder(_, configs, expected):
    out = Path(tempfile.gettempdir()) / "grunet-run"
    parser = load_config([str(ROOT / c) if c.endswith(".json") else c for c in configs], overrides={"output_dir": str(out)})
    folder = Path(parser.get_parsed_content("ckpt_dir")).resolve()
    assert folder == (Path(expected.replace("<out>", str(out))) if "<out>" in expected else BUNDLE_ROOT / expected).resolve()
    if "evaluate" in configs:  # evaluates the shipped weights by default
        loader = parser["validate#handlers"][0]
        assert loader["_target_"] == "CheckpointLoader"
        assert Path(parser.get_parsed_content("validate#handlers#0#load_path")).resolve() == BUNDLE_ROOT / "models" / "model.pt"
    else:  # the best-model saver writes model.pt there
        assert Path(parser.get_parsed_content("best_model_saver#save_dir")).resolve() == folder


def test_train_does_not_write_the_shipped_models_by_default():
    parser = load_config("train")
    assert Path(parser.get_parsed_content("ckpt_dir")).resolve() != BUNDLE_ROOT / "models"
    assert Path(parser.get_parsed_content("ckpt_dir")).resolve().is_relative_to(Path(parser.get_parsed_content("output_dir")).resolve())
    explicit = load_config("train", overrides={"ckpt_dir": str(BUNDLE_ROOT / "models")})  # --ckpt_dir models
    assert Path(explicit.get_parsed_content("best_model_saver#save_dir")) == BUNDLE_ROOT / "models"


# -- resuming ---------------------------------------------------------------------------------------------------
def test_resume_without_checkpoint_warns(tmp_path, caplog):
    parser = load_config("train", overrides={"resume": True, "output_dir": str(tmp_path)})
    with caplog.at_level(logging.WARNING, logger="bundle.training.checkpoints"):
        assert parser.get_parsed_content("resume_path") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(tmp_path / "checkpoints") in warnings[0].getMessage()
    assert "training starts from scratch" in warnings[0].getMessage()


def _records(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resumed_training_history_has_no_duplicates(tmp_path):
    """Two epochs (checkpoints of both kept), then as if killed after the checkpoint of epoch 1: the epoch-2
    checkpoint is removed, its history lines stay; resuming to 3 epochs writes epochs 2 and 3 once."""
    out, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    common = ["training", "--config_file", "configs/train.json", *META]
    overrides = {**TINY, "dataset_dir": MONUSEG, "output_dir": out, "resume": "true"}

    first = _ok(bundle_run([*common, *cli_overrides({**overrides, "epochs": 2, "checkpoint_saver#n_saved": 2})]))
    warning = [line for line in first.splitlines() if "WARNING" in line and "--resume" in line]
    assert len(warning) == 1 and str(checkpoints) in warning[0] and "training starts from scratch" in warning[0]
    assert (out / "models" / "model.pt").is_file()  # under --output_dir, not the bundle's models/
    before = _records(out / HISTORY)
    per_epoch = sum(1 for r in before if r["event"] == "iteration" and r["epoch"] == 1)
    assert {r["epoch"] for r in before if r["event"] == "epoch"} == {1, 2}
    (checkpoints / "checkpoint_epoch=2.pt").unlink()  # killed before this checkpoint was written

    resumed = _ok(bundle_run([*common, *cli_overrides({**overrides, "epochs": 3})]))
    assert f"Restored all variables from {checkpoints / 'checkpoint_epoch=1.pt'}" in resumed
    assert "starts from scratch" not in resumed
    assert "resumed best-model tracking from" in resumed  # the epoch-2 validation, read before it was dropped
    after = _records(out / HISTORY)
    keys = Counter((r["event"], r["epoch"], r["iteration"] if r["event"] == "iteration" else None) for r in after)
    assert [k for k, n in keys.items() if n > 1] == []
    assert [r["epoch"] for r in after if r["event"] == "epoch"] == [1, 2, 3]
    assert [r["iteration"] for r in after if r["event"] == "iteration"] == list(range(1, 3 * per_epoch + 1))
    assert after[: per_epoch + 1] == before[: per_epoch + 1]  # epoch 1 is kept as it was
    dropped = _records(out / DROPPED)  # epoch 2 of the first run, moved aside
    assert dropped and {r["epoch"] for r in dropped} == {2} and "val_mean_dice" in dropped[-1]


def _engine_with_savers(folder: Path, crash_at_epoch: int):
    """An ignite engine whose epochs save a resumable checkpoint and the 'best' model (every epoch better), with
    ``torch.save`` killed half-way through the writes of epoch ``crash_at_epoch``."""
    from ignite.engine import Engine, Events

    from bundle.training.checkpoint_saver import AtomicCheckpointSaver

    network = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    interval = AtomicCheckpointSaver(str(folder), {"model": network, "optimizer": optimizer}, save_interval=1, n_saved=1, epoch_level=True)
    best = AtomicCheckpointSaver(str(folder / "models"), {"model": network}, save_key_metric=True, key_metric_name="score",
                                 key_metric_filename="model.pt")

    @engine.on(Events.EPOCH_COMPLETED)
    def score(e):
        e.state.metrics = {"score": float(e.state.epoch)}

    interval.attach(engine)
    best.attach(engine)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if engine.state.epoch == crash_at_epoch:  # the kill lands during the write
            if isinstance(f, (str, os.PathLike)):
                Path(f).write_bytes(b"PK\x03\x04 half a file")
            else:
                f.write(b"PK\x03\x04 half a file")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    return engine, save


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_files(tmp_path, monkeypatch):
    """0.7.3 (MONAI's saver: the old file removed, then the new one written in place) kept no complete checkpoint
    and a truncated models/model.pt after such a kill."""
    from bundle.training.checkpoints import find_last_checkpoint

    engine, save = _engine_with_savers(tmp_path, crash_at_epoch=3)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=5)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["checkpoint_epoch=2.pt", "models/model.pt"], "no temporary file left, no half-written file"
    assert find_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=2.pt")
    assert zipfile.is_zipfile(tmp_path / "models" / "model.pt"), "the best model so far is intact"


def test_a_fresh_run_sets_an_earlier_runs_checkpoints_aside(tmp_path):
    """Run A ended at epoch 100; run B starts from scratch in the same folder: a later ``--resume`` of B must not
    continue from A's epoch 100 (0.7.3 did: the highest epoch in the folder)."""
    from types import SimpleNamespace

    from bundle.training.checkpoints import find_last_checkpoint
    from bundle.training.tracking import TrainingHistory

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"model": {}}, checkpoints / "checkpoint_epoch=100.pt")
    history = TrainingHistory(tmp_path, checkpoint_dir=checkpoints)
    history._start_run(None)
    history._start_epoch(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    assert find_last_checkpoint(checkpoints) is None
    assert (checkpoints / "previous" / "checkpoint_epoch=100.pt").is_file()
    torch.save({"model": {}}, checkpoints / "checkpoint_epoch=3.pt")  # B's own, then B resumes after epoch 3
    history._start_run(None)
    history._start_epoch(SimpleNamespace(state=SimpleNamespace(epoch=4)))
    assert find_last_checkpoint(checkpoints) == str(checkpoints / "checkpoint_epoch=3.pt")


def test_training_stops_at_the_first_non_finite_loss(tmp_path):
    """A learning rate of 1e30 makes the second loss NaN: one error line, no further iterations, no checkpoint."""
    out = tmp_path / "run"
    args = cli_overrides({**TINY, "dataset_dir": MONUSEG, "output_dir": out, "epochs": 3, "learning_rate": 1e30})
    log = _ok(bundle_run(["training", "--config_file", "configs/train.json", *META, *args]))
    (error,) = [line for line in log.splitlines() if "training loss is" in line]
    assert "ERROR" in error and "at epoch 1, iteration 2: training stopped" in error
    iterations = [r for r in _records(out / HISTORY) if r["event"] == "iteration"]
    assert [r["iteration"] for r in iterations] == [1, 2]
    assert not list((out / "checkpoints").glob("*.pt"))


def test_truncate_history_and_best_metric_of_dropped_records(tmp_path):
    from monai.handlers import CheckpointSaver

    lines = [
        {"event": "iteration", "epoch": 1, "iteration": 1},
        {"event": "epoch", "epoch": 1, "val_mean_dice": 0.5},
        {"event": "iteration", "epoch": 2, "iteration": 2},
        {"event": "epoch", "epoch": 2, "val_mean_dice": 0.8},
    ]
    (tmp_path / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "itera')  # cut by a kill
    assert truncate_history(tmp_path, 1) == 3
    assert _records(tmp_path / HISTORY) == lines[:2]
    assert _records(tmp_path / DROPPED) == lines[2:]
    assert truncate_history(tmp_path, 1) == 0  # nothing later than epoch 1 left
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
    assert restore_best_metric(saver, tmp_path / HISTORY) == pytest.approx(0.8)  # the model.pt of epoch 2
    # a fresh start in the same folder: the earlier run's curve is moved aside, its best score forgotten
    assert truncate_history(tmp_path, 0) == 2
    assert not (tmp_path / HISTORY).exists() and not (tmp_path / DROPPED).exists()
    assert _records(tmp_path / PREVIOUS) == lines[:2]


# -- bad inputs: one line naming the path -------------------------------------------------------------------------
MISSING_DATASET_CASES = [
    ("training", ["training", "--config_file", "configs/train.json"]),
    ("evaluate", ["--config_file", "['configs/train.json','configs/evaluate.json']"]),
]


@parameterized.expand(MISSING_DATASET_CASES)
def test_missing_dataset_dir_is_one_line(_, args):
    proc = bundle_run([*args, *META, "--dataset_dir", "/nonexistent"], timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "/nonexistent" in last, proc.stderr[-3000:]
    assert last == "error: dataset_dir does not exist: /nonexistent"
    assert "Traceback" not in proc.stderr


def _dataset_file(folder: Path) -> Path:
    path = folder / "data.txt"
    path.write_text("x")
    return path


DATALIST_ERROR_CASES = [
    # what, make the dataset_dir, error type, also a, message
    ("missing", lambda d: d / "nowhere", DatasetNotFoundError, FileNotFoundError, "dataset_dir does not exist: .*nowhere"),
    ("file", _dataset_file, DatasetNotAFolderError, NotADirectoryError, "dataset_dir is not a folder: .*data.txt"),
    ("no masks", lambda d: (d / "images").mkdir() or d, DatasetNotFoundError, FileNotFoundError, "mask folder of .* does not exist"),
    ("empty", lambda d: [(d / s).mkdir() for s in ("images", "masks")] and d, InputError, ValueError, "no usable image-mask pair in"),
]


@parameterized.expand(DATALIST_ERROR_CASES)
def test_datalist_errors_are_input_errors(_, make, error, compatible, message):
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(error, match=message) as info:
            paired_datalist(make(Path(tmp)))
    assert isinstance(info.value, InputError) and isinstance(info.value, compatible)


@parameterized.expand([("mode", {"mode": "patients"}), ("fraction", {"val_fraction": 1.5}), ("fold", {"mode": "kfold", "fold": 7})])
def test_split_option_errors_are_input_errors(_, kwargs):
    items = [{"id": f"i{k}", "group": f"g{k}"} for k in range(6)]
    with pytest.raises(InputError):
        split_datalist(items, **kwargs)


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    return path


def _zip_not_torch(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:  # a zip archive, but not one torch.save wrote
        z.writestr("notes.txt", "x")
    return path


CHECKPOINT_ERROR_CASES = [
    ("missing", None, CheckpointNotFoundError, "model checkpoint not found: .*m.pt"),
    ("text", b"not a checkpoint\n", InputError, "m.pt: not a readable model checkpoint \\(not a torch.save archive\\)"),
    ("not weights", {"model": [1, 2]}, InputError, "m.pt: expected a state dict"),
]


@parameterized.expand(CHECKPOINT_ERROR_CASES)
def test_checkpoint_errors_are_input_errors(_, content, error, message):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "m.pt", content)
        with pytest.raises(error, match=message) as info:
            load_state_dict(path)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)  # old callers catch ValueError


def test_zip_that_is_not_a_checkpoint_is_an_input_error(tmp_path):
    path = _zip_not_torch(tmp_path / "c.pt")
    with pytest.raises(InputError, match=re.escape(f"{path}: not a readable PyTorch checkpoint")):
        load_torch_file(path)


def test_bad_checkpoint_is_one_line_at_the_command_line(tmp_path):
    path = _write(tmp_path / "m.pt", b"not a checkpoint\n")
    code = (
        "import sys; from bundle.errors import install_error_hook; install_error_hook(); "
        "from bundle.training.checkpoints import load_state_dict; load_state_dict(sys.argv[1])"
    )
    proc = subprocess.run([PY, "-c", code, str(path)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {path}: not a readable model checkpoint (not a torch.save archive)"]


# -- the training benchmark ---------------------------------------------------------------------------------------
def test_benchmark_variants_are_the_ablation_overlays():
    overlays = sorted(p.stem for p in (ROOT / "configs" / "ablations").glob("*.json"))
    networks = sorted(p.stem for p in (ROOT / "configs" / "networks").glob("*.json"))
    assert overlays and list(benchmark_training.VARIANTS) == ["full", "compact", *overlays, *networks]
    assert benchmark_training.VARIANTS["full"] == [] and benchmark_training.VARIANTS["compact"] == ["configs/compact.json"]
    for name in overlays:
        assert benchmark_training.VARIANTS[name] == [f"configs/ablations/{name}.json"]
    assert benchmark_training.width_overrides("basicunet", 4) == {"network_def#features": [4, 8, 16, 32, 64, 4]}
    assert benchmark_training.width_overrides("no_gdam", 4) == {"network_def#features": 4, "network_def#cdrb_units": 2}
    assert all(benchmark_training.width_overrides(name, 4) == {} for name in networks), "their overlays' own sizes"


@parameterized.expand([(v, "fp32") for v in benchmark_training.VARIANTS] + [("compact", o) for o in benchmark_training.OPTIONS])
def test_benchmark_runs_each_variant(variant, option):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = subprocess_free_benchmark(variant, option)
    finally:
        torch.set_num_threads(before)
    row = [line for line in out.splitlines() if line.startswith(f"| {variant} | {option} |")]
    assert len(row) == 1, out
    patches_per_s = float(row[0].split("|")[4])
    assert patches_per_s > 0


def subprocess_free_benchmark(variant: str, option: str = "fp32") -> str:
    """``scripts/benchmark_training.py`` in this process (width 4, 2 patches of 32x32, one timed step); stdout."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = benchmark_training.main(
            ["--variants", variant, "--options", option, "--device", "cpu", "--width", "4", "--size", "32", "--batch", "2", "--warmup", "0", "--iters", "1"]
        )
    assert rc == 0
    out = buffer.getvalue()
    assert "training patches/s" in out
    return out


def test_benchmark_steps_on_the_training_loss_and_targets():
    x, y = benchmark_training.synthetic_batch(2, 32)
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 2, 32, 32)
    assert set(torch.unique(y[:, 0]).tolist()) == {0.0, 1.0}  # mask
    assert float(y[:, 1].max()) == pytest.approx(1.0) and float(y[:, 1].min()) == 0.0  # normalised distance
    assert not bool((y[:, 1] * (1 - y[:, 0])).any())  # distance only inside nuclei
    loss = benchmark_training.variant_config("full", 4).get_parsed_content("loss")
    assert type(loss).__name__ == "NucleusLoss"


# -- metadata -----------------------------------------------------------------------------------------------------
def test_metadata_output_channels_match_the_network():
    meta = json.loads(config_path("metadata").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert set(pred["channel_def"]) == {str(c) for c in range(pred["num_channels"])}
    assert "nucleus" in pred["channel_def"]["0"] and "distance" in pred["channel_def"]["1"]
    net = load_config("inference", overrides={"network_def#features": 8, "network_def#cdrb_units": 2}).get_parsed_content("network_def")
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, 64, 64))
    assert tuple(out.shape) == (1, pred["num_channels"], 64, 64)


def test_metadata_has_measured_evaluation_figures():
    metrics = json.loads(config_path("metadata").read_text())["eval_metrics"]
    assert {"mean_dice", "mean_aji", "mean_pq", "mean_f1", "tnbc_mean_dice"} <= set(metrics)
    assert all(0.0 < v < 1.0 for v in metrics.values()), metrics
