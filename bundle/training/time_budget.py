"""Train for a fixed number of minutes: size the run to the time it has, and stop before it runs over."""

from __future__ import annotations

import logging
import math
import time
from typing import Optional

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

__all__ = ["TrainingTimeBudget"]

logger = logging.getLogger(__name__)


class TrainingTimeBudget:
    """A MONAI / ignite trainer handler that fits a training run into ``minutes`` of wall-clock time.

    After each epoch from ``calibration_epochs`` on, the run's length becomes the number of whole epochs that fit
    into the budget at the mean pace since the end of epoch 1 (the first epoch pays for start-up: workers,
    cuDNN's algorithm search; validation epochs enter the mean as they come), at most the configured
    ``max_epochs``. ``engine.state.max_epochs`` is set to it and, when ``lr_scheduler`` is a
    :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` stepped once per epoch, its ``T_max`` too, so that the
    learning rate still decays to its floor by the last epoch. When not one more epoch fits, the epoch just
    completed becomes the last (``max_epochs``): attached before
    :class:`bundle.training.validation.ValidationHandlerWithLastEpoch`, it is validated and checkpointed. The
    budget counts from this run's start; a resumed run gets the whole budget again. Under ``torch.distributed``
    the ranks take the smallest count (a MIN all-reduce), so that all of them stop after the same epoch.

    Args:
        minutes: the wall-clock budget of the run.
        lr_scheduler: the epoch-level cosine schedule to fit to the run's length, if any.
        calibration_epochs: the first epoch after which the run is sized (at least 2).
    """

    def __init__(self, minutes: float, lr_scheduler: Optional[LRScheduler] = None, calibration_epochs: int = 3):
        if not minutes > 0:
            raise ValueError(f"the training time budget must be positive, got {minutes} minutes")
        self.budget_s = 60.0 * float(minutes)
        self.lr_scheduler = lr_scheduler
        self.calibration_epochs = max(2, int(calibration_epochs))
        self._start = self._first_epoch_end = 0.0
        self._epochs = self._configured = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()
        self._epochs, self._configured = 0, engine.state.max_epochs

    def _epoch_started(self, engine: Engine) -> None:
        # resumed from a shortened run (its checkpoint holds T_max = its last epoch): stepping past T_max would
        # warm-restart the cosine (the learning rate climbing back), so stretch it to the configured length
        scheduler = self.lr_scheduler
        if self._epochs == 0 and isinstance(scheduler, CosineAnnealingLR) and scheduler.T_max <= scheduler.last_epoch:
            scheduler.T_max = max(self._configured, scheduler.last_epoch + 1)

    def _epoch_completed(self, engine: Engine) -> None:
        now = time.monotonic()
        self._epochs += 1
        elapsed = now - self._start
        if self._epochs == 1:
            self._first_epoch_end = now
            pace = elapsed  # start-up included: an upper bound
        else:
            pace = (now - self._first_epoch_end) / (self._epochs - 1)
        epoch = engine.state.epoch
        fits = _agreed(max(0, math.floor((self.budget_s - elapsed) / max(pace, 1e-9))))
        if fits == 0 and epoch < engine.state.max_epochs:
            logger.info(
                "training time budget: stopping after epoch %d at %.1f of %.1f minutes (%.1f s per epoch)",
                epoch, elapsed / 60, self.budget_s / 60, pace,
            )
            engine.state.max_epochs = epoch  # the last epoch: validated (ValidationHandlerWithLastEpoch), saved
            return
        if self._epochs < self.calibration_epochs:
            return
        max_epochs = min(self._configured, epoch + fits)
        if self._epochs == self.calibration_epochs:
            logger.info(
                "training time budget: %.1f s per epoch, %d epochs fit into %.1f minutes (configured %d)",
                pace, max_epochs, self.budget_s / 60, self._configured,
            )
        engine.state.max_epochs = max_epochs
        if isinstance(self.lr_scheduler, CosineAnnealingLR):
            self.lr_scheduler.T_max = max_epochs


def _agreed(fits: int) -> int:
    """The smallest of the ranks' epoch counts under ``torch.distributed``; ``fits`` itself otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return fits
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([fits], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())
