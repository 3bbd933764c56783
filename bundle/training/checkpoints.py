"""Finding and loading training checkpoints (always with ``torch.load(..., weights_only=True)``)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from bundle.errors import InputError

__all__ = [
    "CheckpointNotFoundError",
    "find_last_checkpoint",
    "set_aside_checkpoints",
    "resume_checkpoint",
    "load_torch_file",
    "load_state_dict",
    "restore_best_metric",
]
PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


class CheckpointNotFoundError(InputError, FileNotFoundError):
    """No file at a checkpoint's path (an :class:`~bundle.errors.InputError` and a ``FileNotFoundError``)."""


def find_last_checkpoint(checkpoint_dir: PathLike, pattern: str = "checkpoint_epoch=*.pt") -> Optional[str]:
    """Path of the newest complete resumable checkpoint in ``checkpoint_dir`` (highest epoch), or None.

    A file cut short by a kill during its write (no zip central directory) is skipped with a warning, so that
    training resumes from the previous complete checkpoint instead of failing.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None

    def epoch(p: Path) -> int:
        digits = "".join(ch for ch in p.stem.split("=")[-1] if ch.isdigit())
        return int(digits) if digits else -1

    for candidate in sorted(folder.glob(pattern), key=epoch, reverse=True):
        if zipfile.is_zipfile(candidate):
            return str(candidate)
        warnings.warn(f"{candidate}: incomplete checkpoint (interrupted write), skipped", stacklevel=2)
    return None


def set_aside_checkpoints(checkpoint_dir: PathLike, pattern: str = "checkpoint_epoch=*.pt") -> int:
    """Move an earlier run's resumable checkpoints into ``<checkpoint_dir>/previous/`` (replacing what is there), when
    a run starts from scratch in the same folder: otherwise a later ``--resume`` of this run would continue from
    the earlier run's highest epoch. Returns how many were moved."""
    folder = Path(checkpoint_dir)
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if found:
        previous = folder / "previous"
        previous.mkdir(exist_ok=True)
        for old in previous.glob(pattern):
            old.unlink()
        for path in found:
            os.replace(path, previous / path.name)
        logger.warning("%s: %d checkpoint(s) of an earlier run moved to %s; this run starts from scratch", folder, len(found), previous)
    return len(found)


def resume_checkpoint(checkpoint_dir: PathLike) -> Optional[str]:
    """The checkpoint ``--resume true`` continues from (:func:`find_last_checkpoint`), or None with a warning.

    Without a complete checkpoint in ``checkpoint_dir`` training starts from scratch; the warning says so, naming
    the folder, so that a mistyped ``--output_dir`` is noticed at once rather than after a full training.
    """
    found = find_last_checkpoint(checkpoint_dir)
    if found is None:
        logger.warning("--resume: no checkpoint in %s; training starts from scratch", Path(checkpoint_dir))
    else:
        logger.info("--resume: continuing from %s", found)
    return found


def load_torch_file(path: PathLike, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file.

    Raises:
        CheckpointNotFoundError: no file at ``path`` (a ``FileNotFoundError``).
        InputError: not a ``torch.save`` archive, a corrupt one, or one holding types ``weights_only`` refuses
            (a ``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable {what} (not a torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise InputError(f"{path}: not a readable {what} ({err})") from err


def load_state_dict(path: PathLike, key: str = "model") -> Dict[str, torch.Tensor]:
    """Network weights from a checkpoint file: a plain state dict or ``{"model": state_dict, ...}``.

    Raises:
        CheckpointNotFoundError: no file at ``path`` (a ``FileNotFoundError``).
        InputError: the file is not a readable PyTorch checkpoint or holds no state dict (a ``ValueError``).
    """
    ckpt = load_torch_file(path, "model checkpoint")
    state = ckpt.get(key, ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict or {{'{key}': state_dict}}")
    return state


def restore_best_metric(saver: Any, history: PathLike, metric: str = "val_mean_dice", filename: str = "model.pt") -> Optional[float]:
    """Give a best-model ``CheckpointSaver`` back its best score when training resumes.

    Without this a resumed training forgets its best validation score and overwrites ``model.pt`` with the next,
    possibly worse, model. The best score is read from the run's ``history.jsonl``
    (:class:`bundle.training.tracking.TrainingHistory`), which records every validation, also those after the last
    complete checkpoint, and from the ``history.dropped.jsonl`` beside it (validations after the checkpoint an
    earlier resume continued from): their maximum is the score of the ``model.pt`` on disk.

    Returns:
        the restored best score, or None when the history holds no value of ``metric``.
    """
    from bundle.training.tracking import DROPPED

    path = Path(history)
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    if (path.parent / DROPPED).is_file():
        lines += (path.parent / DROPPED).read_text().splitlines()
    scores = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("event") == "epoch" and metric in record:
            scores.append(float(record[metric]))
    if not scores:
        return None
    best = max(scores)
    saver.load_state_dict({"saved": [(best, filename)]})
    logging.getLogger(__name__).info("resumed best-model tracking from %s: best %s %.4f", path, metric, best)
    return best
