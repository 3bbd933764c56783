"""The training time budget: a run sized to the minutes it has, with its cosine schedule, and stopped in time.

A fake clock (one step of ``seconds_per_iteration`` per iteration, plus start-up in the first) makes the cases exact.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine, Events
from parameterized import parameterized

from bundle.training import time_budget
from bundle.training.time_budget import TrainingTimeBudget
from tests.helpers import MONUSEG, ROOT, cli_overrides

CASES = [
    # minutes, configured epochs, start-up s, s per epoch, expected epochs run
    (1.0, 100, 5.0, 10.0, 5),  # epoch 3 ends at 35 s: 2 more fit (55 s); epoch 5 is the last
    (1.0, 4, 5.0, 10.0, 4),  # the configured length fits: it is kept
    (0.1, 100, 5.0, 10.0, 1),  # the first epoch alone overruns 6 s: stop after it
    (2.0, 100, 0.0, 7.0, 17),  # 120 s / 7 s: epochs end at 7, 14, ..., 119
]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@parameterized.expand(CASES)
def test_run_fits_the_budget(minutes, epochs, startup, per_epoch, expected):
    clock = FakeClock()
    mp = pytest.MonkeyPatch()
    mp.setattr(time_budget.time, "monotonic", clock)
    iterations = 2
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)

    def step(engine, batch):
        optimizer.step()
        clock.now += per_epoch / iterations + (startup if engine.state.iteration == 1 else 0.0)

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())  # before, as in train.json
    TrainingTimeBudget(minutes, lr_scheduler=scheduler).attach(engine)
    try:
        engine.run(range(iterations), max_epochs=epochs)
    finally:
        mp.undo()
    assert engine.state.epoch == expected
    assert clock.now - 1000.0 <= 60 * minutes or expected == 1
    if expected >= 3:  # sized: the schedule ends with the run, at its floor
        assert scheduler.T_max == expected
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        TrainingTimeBudget(0)


def test_training_minutes_stops_a_bundle_run(tmp_path):
    """``--training_minutes`` through the bundle CLI: far fewer epochs than configured, the last one checkpointed."""
    from tests.test_training import META, TINY, _env, _ok, _records

    out = tmp_path / "run"
    args = cli_overrides({**TINY, "dataset_dir": MONUSEG, "output_dir": out, "epochs": 1000, "training_minutes": 0.1})
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json", *META, *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    log = _ok(proc)
    assert "training time budget: stopping after epoch" in log or "epochs fit into 0.1 minutes" in log
    epochs = [r["epoch"] for r in _records(out / "history.jsonl") if r["event"] == "epoch"]
    assert 1 <= epochs[-1] < 1000
    assert (out / "checkpoints" / f"checkpoint_epoch={epochs[-1]}.pt").is_file()


@parameterized.expand([(8, 5, [5, 8]), (10, 5, [5, 10]), (3, 5, [3])])
def test_validation_at_intervals_and_the_last_epoch(epochs, interval, expected):
    from bundle.training.validation import ValidationHandlerWithLastEpoch

    from monai.engines import Evaluator

    validated = []
    validator = Evaluator(device="cpu", val_data_loader=[0], iteration_update=lambda e, b: None)
    trainer = Engine(lambda e, b: None)
    handler = ValidationHandlerWithLastEpoch(interval=interval, validator=validator)
    handler.attach(trainer)
    validator.add_event_handler(Events.STARTED, lambda e: validated.append(trainer.state.epoch))
    trainer.run(range(2), max_epochs=epochs)
    assert validated == expected


def test_resumed_shortened_schedule_is_not_restarted():
    """A checkpoint of a shortened run holds ``T_max`` = its last epoch; resumed, the schedule must not warm-restart
    (the learning rate climbing back) before the budget sizes it again."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5, eta_min=0.0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # where the shortened run ended
    engine = Engine(lambda e, b: optimizer.step())
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    TrainingTimeBudget(60.0, lr_scheduler=scheduler).attach(engine)
    lrs = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    engine.state.epoch, engine.state.iteration, engine.state.epoch_length, engine.state.max_epochs = 5, 5, 1, 10
    engine.run(range(1), max_epochs=10)  # ignite resumes from epoch 5, as after MONAI's CheckpointLoader
    assert engine.state.epoch == 10 and len(lrs) == 5
    assert max(lrs) == pytest.approx(0.0, abs=1e-12)
