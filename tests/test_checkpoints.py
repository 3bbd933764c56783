"""Checkpoint discovery and weights-only loading."""

from __future__ import annotations

import pytest
import torch

from bundle.training.checkpoints import find_last_checkpoint, load_state_dict, restore_best_metric
from bundle.config_io import BUNDLE_ROOT


def test_find_last_checkpoint_orders_by_epoch_number(tmp_path):
    assert find_last_checkpoint(tmp_path / "missing") is None
    assert find_last_checkpoint(tmp_path) is None
    for epoch in (2, 9, 10):
        torch.save({}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    assert find_last_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")


def test_find_last_checkpoint_skips_a_truncated_write(tmp_path):
    for epoch in (3, 4):
        torch.save({"x": torch.ones(100)}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    newest = tmp_path / "checkpoint_epoch=4.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # killed while writing
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_last_checkpoint(tmp_path).endswith("checkpoint_epoch=3.pt")


@pytest.mark.parametrize("wrap", [False, True])
def test_load_state_dict_plain_or_wrapped(tmp_path, wrap):
    state = {"w": torch.ones(2)}
    torch.save({"model": state, "epoch": 3} if wrap else state, tmp_path / "m.pt")
    assert torch.equal(load_state_dict(tmp_path / "m.pt")["w"], torch.ones(2))


@pytest.mark.parametrize(
    "content, error, match",
    [
        (None, FileNotFoundError, "model checkpoint not found"),
        (b"not a checkpoint", ValueError, "not a torch.save archive"),
        ({"model": [1, 2]}, ValueError, "expected a state dict"),
    ],
)
def test_load_state_dict_errors(tmp_path, content, error, match):
    path = tmp_path / "m.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(error, match=match):
        load_state_dict(path)


def test_shipped_model_loads_weights_only_into_the_configured_network():
    from bundle.config_io import load_config

    net = load_config("inference").get_parsed_content("network_def")
    state = load_state_dict(BUNDLE_ROOT / "models" / "model.pt")
    assert net.load_state_dict(state, strict=True) is not None
    assert (BUNDLE_ROOT / "models" / "model.pt").stat().st_size < 100 * 1024 * 1024
    # a plain state dict (what `monai.bundle ckpt_export` and MONAI Label load), with the distance head
    raw = torch.load(BUNDLE_ROOT / "models" / "model.pt", weights_only=True)
    assert "stem.shortcut.conv.weight" in raw and any(k.startswith("distance.") for k in raw)


def test_speed_yardstick_loads_weights_only_into_monai_basicunet():
    from monai.networks.nets import BasicUNet

    path = BUNDLE_ROOT / "models" / "basicunet_yardstick.pt"  # scripts/benchmark_speed.py's BasicUNet, trained
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    assert net.load_state_dict(load_state_dict(path), strict=True) is not None
    assert net.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_restore_best_metric_into_a_monai_saver(tmp_path):
    from monai.handlers import CheckpointSaver

    saver = CheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(2, 1)}, save_key_metric=True, key_metric_filename="model.pt"
    )
    history = tmp_path / "history.jsonl"
    assert restore_best_metric(saver, history) is None  # no history yet
    history.write_text(
        '{"event": "iteration", "epoch": 1, "iteration": 1, "loss": 1.0}\n'
        '{"event": "epoch", "epoch": 1, "val_mean_dice": 0.70}\n'
        '{"event": "epoch", "epoch": 2}\n'
        '{"event": "epoch", "epoch": 3, "val_mean_dice": 0.79}\n'
        '{"event": "epoch", "epoch": 4, "val_mean_dice": 0.75}\n'
        '{"event": "epo'  # cut short by a kill
    )
    assert restore_best_metric(saver, history) == pytest.approx(0.79)
    assert saver._key_metric_checkpoint.state_dict()["saved"] == [(0.79, "model.pt")]
