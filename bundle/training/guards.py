"""Stop a training run whose loss stops being a number, before it spends hours on NaN weights."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.handlers import from_engine

__all__ = ["StopOnNonFiniteLoss"]

logger = logging.getLogger(__name__)


class StopOnNonFiniteLoss:
    """A MONAI / ignite trainer handler: at the first iteration whose loss is NaN or infinite, log one error line
    (epoch, iteration, what to change) and terminate the run.

    One such step makes AdamW write NaN into every weight it touches, and MONAI's trainers go on to the end of
    the run; ignite's ``TerminateOnNan`` has no ``attach`` for a MONAI handler list. The checkpoint of the last
    complete epoch, written before that iteration, stays finite and ``--resume true`` starts from it. Under
    ``torch.distributed`` the ranks agree (a MAX all-reduce of the flag) so that all of them stop at the same
    iteration and none waits for the others.

    Args:
        output_transform: the loss from ``engine.state.output``. Default: MONAI's ``loss`` entry.
    """

    def __init__(self, output_transform: Optional[Callable[[Any], Any]] = None):
        self.output_transform = output_transform or from_engine(["loss"], first=True)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = torch.as_tensor(self.output_transform(engine.state.output)).detach()
        bad = (~torch.isfinite(loss)).any().to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.item():
            return
        value = float(loss.float().mean())
        logger.error(
            "training loss is %s at epoch %d, iteration %d: training stopped (lower --learning_rate, or train in "
            "fp32 with --train_bf16 False; --resume true starts from the last checkpoint)",
            value, engine.state.epoch, engine.state.iteration,
        )
        engine.terminate()
