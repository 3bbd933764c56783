"""Validate every N epochs and at the last one, so that the best-model saver sees the weights a run ends with."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["ValidationHandlerWithLastEpoch"]


class ValidationHandlerWithLastEpoch(ValidationHandler):
    """MONAI's epoch-level :class:`~monai.handlers.ValidationHandler`, also run after the last epoch when that is
    not a multiple of ``interval`` (``--epochs 8 --val_interval 5``, or a run that
    :class:`bundle.training.time_budget.TrainingTimeBudget` shortened: attach that one first).

    Args: those of :class:`~monai.handlers.ValidationHandler` (epoch level only).
    """

    def attach(self, engine: Engine) -> None:
        if not self.epoch_level:
            raise ValueError("ValidationHandlerWithLastEpoch validates at epoch level only")
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_unvalidated), self)

    def _last_unvalidated(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0
