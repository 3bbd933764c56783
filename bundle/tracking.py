"""Experiment tracking helpers: hyper-parameters for MONAI's MLflow handlers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from monai.handlers import MLFlowHandler

__all__ = ["flatten_params", "set_mlflow_params"]


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
