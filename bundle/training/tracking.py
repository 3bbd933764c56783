"""Experiment tracking helpers: hyper-parameters for MONAI's MLflow handlers."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from monai.handlers import MLFlowHandler

from bundle.training.checkpoints import set_aside_checkpoints

__all__ = ["flatten_params", "set_mlflow_params", "TrainingHistory", "HISTORY", "DROPPED", "PREVIOUS", "truncate_history"]

HISTORY = "history.jsonl"
DROPPED = "history.dropped.jsonl"  # records a resume took out of the history (epochs after its checkpoint)
PREVIOUS = "history.previous.jsonl"  # the history of an earlier run in the same folder, moved aside by a fresh start
logger = logging.getLogger(__name__)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts into ``{"a.b": value}`` with values MLflow can log (lists become strings)."""
    flat: Dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def set_mlflow_params(
    handlers: Iterable[Any], params: Mapping[str, Any], output_dir: Optional[Union[str, os.PathLike]] = None
) -> int:
    """Give every ``MLFlowHandler`` among ``handlers`` the run's hyper-parameters to log when the run starts.

    ``--tracking mlflow`` appends MLflow handlers that log only ``max_epochs`` and ``epoch_length``; call this
    before ``trainer.run()`` to log the recipe too. When ``output_dir`` is given and a handler's artifact path
    does not exist (MONAI builds it by string concatenation, which breaks when ``--output_dir`` is given as a
    plain path), the newest executed config ``<output_dir>/config_*.json`` is logged instead.

    Returns:
        how many handlers were given the parameters.
    """
    found = 0
    configs = sorted(Path(output_dir).glob("config_*.json")) if output_dir else []
    for handler in handlers or []:
        if isinstance(handler, MLFlowHandler):
            handler.experiment_param = {**(handler.experiment_param or {}), **flatten_params(params)}
            if configs and handler.artifacts and not all(a and os.path.exists(a) for a in handler.artifacts):
                handler.artifacts = (str(configs[-1]),)
            found += 1
    return found


def _read_lines(path: Path) -> List[str]:
    return path.read_text().splitlines() if path.is_file() else []


def truncate_history(output_dir: Union[str, os.PathLike], last_epoch: int) -> int:
    """Make ``<output_dir>/history.jsonl`` end at epoch ``last_epoch``, the epoch training (re)starts after.

    Resuming from the checkpoint of epoch E (``last_epoch`` E >= 1): records of epochs after E, written after that
    checkpoint and before the run was killed, are moved to ``history.dropped.jsonl`` (their best validation score
    is that of the ``model.pt`` on disk, which :func:`bundle.training.checkpoints.restore_best_metric` also
    reads); the resumed run writes those epochs again, so each (event, epoch, iteration) is in the history once.
    Starting from scratch (``last_epoch`` 0) in a folder that already has a history: that earlier run's file is
    moved to ``history.previous.jsonl`` (replacing one there) and ``history.dropped.jsonl`` is removed. Lines cut
    short by a kill are dropped.

    Returns:
        how many records were taken out of the history.
    """
    folder = Path(output_dir)
    path = folder / HISTORY
    lines = _read_lines(path)
    if last_epoch < 1:
        (folder / DROPPED).unlink(missing_ok=True)
        if lines:
            os.replace(path, folder / PREVIOUS)
            logger.warning("%s: history of an earlier run moved to %s; this run starts a new one", path, folder / PREVIOUS)
        return len(lines)
    kept, dropped = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        (kept if int(record.get("epoch", 0)) <= last_epoch else dropped).append(line)
    if len(kept) == len(lines):
        return 0
    if dropped:
        with open(folder / DROPPED, "a") as f:
            f.write("".join(line + "\n" for line in dropped))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    logger.info("%s: resuming after epoch %d, %d record(s) of later epochs moved to %s", path, last_epoch, len(dropped), folder / DROPPED)
    return len(lines) - len(kept)


class TrainingHistory:
    """Ignite handler appending the training curve to ``<output_dir>/history.jsonl``, one JSON object a line.

    Per iteration: ``{"event": "iteration", "epoch", "iteration", "loss", "lr"}``; per epoch:
    ``{"event": "epoch", "epoch", "seconds", <trainer metrics>, <validation metrics when validation ran>}``.
    A resumed run continues the same curve: when the first epoch of a run starts (after ``--resume`` restored the
    trainer's state from the checkpoint of epoch E), records of epochs after E are taken out
    (:func:`truncate_history`) and the run appends from epoch E + 1, so no record is in the file twice. It works
    where MLflow is not installed; ``scripts/mlflow_import_history.py`` loads it into an MLflow run.

    A run that starts from scratch in a folder with an earlier run's history and checkpoints sets both aside
    (``history.previous.jsonl``, ``<checkpoint_dir>/previous/``), so that resuming it later continues this run.

    Args:
        output_dir: folder of ``history.jsonl``.
        validator: the validation engine, whose metrics are recorded after epochs where it ran.
        checkpoint_dir: folder of the resumable checkpoints (None: left alone).
    """

    def __init__(
        self, output_dir: Union[str, os.PathLike], validator: Optional[Any] = None, checkpoint_dir: Optional[Union[str, os.PathLike]] = None
    ):
        self.path = Path(output_dir) / HISTORY
        self.validator = validator
        self.checkpoint_dir = checkpoint_dir
        self._epoch_start = 0.0
        self._truncated = False

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start_run)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _write(self, record: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _start_run(self, engine: Any) -> None:
        self._truncated = False

    def _start_epoch(self, engine: Any) -> None:
        # at the first epoch of a run, not at STARTED: a CheckpointLoader restores the trainer's epoch at STARTED,
        # possibly after this handler
        if not self._truncated:
            truncate_history(self.path.parent, engine.state.epoch - 1)
            if engine.state.epoch == 1 and self.checkpoint_dir is not None:
                set_aside_checkpoints(self.checkpoint_dir)
            self._truncated = True
        self._epoch_start = time.perf_counter()

    def _iteration(self, engine: Any) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        loss = items[0].get("loss") if items and isinstance(items[0], dict) else None
        optimizer = getattr(engine, "optimizer", None)
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None
        self._write(
            {
                "event": "iteration",
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "loss": None if loss is None else float(loss),
                "lr": lr,
            }
        )

    def _epoch(self, engine: Any) -> None:
        record: Dict[str, Any] = {
            "event": "epoch",
            "epoch": engine.state.epoch,
            "seconds": time.perf_counter() - self._epoch_start,
        }
        record.update({f"train_{k}" if not k.startswith("train") else k: float(v) for k, v in engine.state.metrics.items()})
        if self.validator is not None and getattr(self.validator.state, "epoch", None) == engine.state.epoch:
            record.update({k: float(v) for k, v in self.validator.state.metrics.items() if isinstance(v, (int, float))})
        self._write(record)
