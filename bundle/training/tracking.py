"""Experiment tracking helpers: hyper-parameters for MONAI's MLflow handlers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from monai.handlers import MLFlowHandler

__all__ = ["flatten_params", "set_mlflow_params", "TrainingHistory"]


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


class TrainingHistory:
    """Ignite handler appending the training curve to ``<output_dir>/history.jsonl``, one JSON object a line.

    Per iteration: ``{"event": "iteration", "epoch", "iteration", "loss", "lr"}``; per epoch:
    ``{"event": "epoch", "epoch", "seconds", <trainer metrics>, <validation metrics when validation ran>}``.
    The file is appended to, so a resumed run continues the same curve. It works where MLflow is not installed;
    ``scripts/mlflow_import_history.py`` loads it into an MLflow run.

    Args:
        output_dir: folder of ``history.jsonl``.
        validator: the validation engine, whose metrics are recorded after epochs where it ran.
    """

    def __init__(self, output_dir: Union[str, os.PathLike], validator: Optional[Any] = None):
        self.path = Path(output_dir) / "history.jsonl"
        self.validator = validator
        self._epoch_start = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _write(self, record: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _start_epoch(self, engine: Any) -> None:
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
