"""The alternative networks (U-Net#, eU-Net3+ with and without fusion) and their blocks: shapes, TorchScript,
frozen foundation encoders, the Focal Tversky loss, and the overlays that select them everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from parameterized import parameterized

from bundle.config_io import MODEL_VARIANTS, load_config
from bundle.errors import InputError
from bundle.networks import EUNet3Plus, GRUNet, UNetSharp
from bundle.networks.eunet3plus import EnhancedFusionBlock
from bundle.networks.foundation import GRUNetEncoder, SAMImageEncoder
from bundle.networks.full_scale import ConvNormAct, FullScaleDecoder
from bundle.training.checkpoints import load_state_dict
from bundle.training.losses import FocalTverskyLoss, NucleusLoss
from tests.helpers import ROOT, first_sample

ENCODER = [8, 16, 32, 64, 128]


def small_foundation() -> GRUNetEncoder:
    return GRUNetEncoder(GRUNet(features=4, cdrb_units=1, gdam_features=4, distance_head=True))


@parameterized.expand([
    # kwargs, input shape, expected shape
    ({"in_channels": 3, "out_channels": 8}, (2, 3, 16, 16), (2, 8, 16, 16)),
    ({"in_channels": 3, "out_channels": 8, "act": "glu"}, (1, 3, 16, 16), (1, 8, 16, 16)),
    ({"in_channels": 4, "out_channels": 6, "act": "mish", "kernel_size": 1}, (1, 4, 9, 7), (1, 6, 9, 7)),
])
def test_conv_norm_act_shapes(kwargs, input_shape, expected):
    assert ConvNormAct(**kwargs)(torch.rand(input_shape)).shape == expected


@parameterized.expand([
    (8, "relu", False, 64, (1, 40, 64, 64)),
    (8, "mish", True, 64, (1, 40, 64, 64)),
    (4, "glu", False, 32, (2, 20, 32, 32)),
])
def test_full_scale_decoder_shapes_and_torchscript(cat, act, attention, side, expected):
    decoder = FullScaleDecoder(ENCODER, cat, act, attention).eval()
    features = [torch.rand(expected[0], c, side // 2**i, side // 2**i) for i, c in enumerate(ENCODER)]
    out = decoder(features)
    assert out.shape == expected and decoder.out_channels == expected[1]
    assert torch.allclose(torch.jit.script(decoder)(features), out, atol=1e-5)


@parameterized.expand([
    # network, kwargs, input shape, expected shape
    ("UNetSharp", {"cat_channels": 8, "aspp_channels": 16}, (1, 3, 64, 64), (1, 2, 64, 64)),
    ("UNetSharp", {"cat_channels": 8, "aspp_channels": 16, "attention": False}, (2, 3, 64, 96), (2, 2, 64, 96)),
    ("EUNet3Plus", {"features": [4, 8, 16, 32, 64], "cat_channels": 4}, (2, 3, 64, 48), (2, 2, 64, 48)),
    ("EUNet3Plus", {"features": [4, 8, 16, 32, 64], "cat_channels": 4, "foundation": "small", "heads": 2}, (1, 3, 64, 64), (1, 2, 64, 64)),
])
def test_network_shapes_and_torchscript_round_trip(name, kwargs, input_shape, expected):
    kwargs = {**kwargs, **({"foundation": small_foundation()} if kwargs.get("foundation") == "small" else {})}
    net = {"UNetSharp": UNetSharp, "EUNet3Plus": EUNet3Plus}[name](**kwargs).eval()
    x = torch.rand(input_shape)
    with torch.no_grad():
        out = net(x)
        assert out.shape == expected
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.ts")
            torch.jit.save(torch.jit.script(net), path)
            assert torch.allclose(torch.jit.load(path)(x), out, atol=1e-5)


@parameterized.expand([
    ("UNetSharp", {}, (1, 3, 48, 64), "multiples of 32"),
    ("EUNet3Plus", {"features": [4, 8, 16, 32, 64]}, (1, 3, 40, 64), "multiples of 16"),
])
def test_network_refuses_sides_it_cannot_halve(name, kwargs, input_shape, message):
    net = {"UNetSharp": UNetSharp, "EUNet3Plus": EUNet3Plus}[name](**kwargs)
    with pytest.raises(ValueError, match=message):
        net(torch.rand(input_shape))


def test_eunet3plus_needs_five_levels():
    with pytest.raises(ValueError, match="5 encoder widths"):
        EUNet3Plus(features=[4, 8, 16])


def test_fusion_block_keeps_the_local_shape():
    block = EnhancedFusionBlock(local_channels=16, global_channels=12, heads=4)
    assert block(torch.rand(2, 16, 8, 8), torch.rand(2, 12, 4, 4)).shape == (2, 16, 8, 8)


def test_foundation_encoder_is_frozen_and_stays_in_eval_mode():
    net = EUNet3Plus(features=[4, 8, 16, 32, 64], cat_channels=4, foundation=small_foundation(), heads=2)
    before = {k: v.clone() for k, v in net.foundation.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    assert not net.foundation.training and net.encoder.training
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.rand(2, 3, 32, 32)).mean().backward()
        optimizer.step()
    after = net.foundation.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights and BN statistics of the frozen encoder unchanged"
    assert all(p.grad is None for p in net.foundation.parameters())


def test_foundation_encoders_refuse_missing_weights_in_one_line(tmp_path):
    with pytest.raises(InputError, match="segment_anything|no such SAM weights"):
        SAMImageEncoder(tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(InputError, match="no such file|missing"):
        GRUNetEncoder(GRUNet(features=4), tmp_path / "missing.pt")


@parameterized.expand([
    # alpha, beta, gamma, case, expected
    (0.3, 0.7, 4 / 3, "perfect", 0.0),
    (0.3, 0.7, 4 / 3, "empty_prediction", 1.0),
    (0.5, 0.5, 1.0, "half", 1 - 2 / 3),  # Tversky with alpha = beta = 0.5 is Dice: 2 * 1 / (2 * 1 + 1)
])
def test_focal_tversky_loss(alpha, beta, gamma, case, expected):
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    logits = {"perfect": (target * 2 - 1) * 50, "empty_prediction": torch.full_like(target, -50.0)}.get(case)
    if case == "half":
        logits = torch.full_like(target, -50.0)
        logits[..., :1, :] = 50.0  # predicts half of the nucleus, nothing else
    loss = FocalTverskyLoss(alpha, beta, gamma)(logits, target)
    assert loss.item() == pytest.approx(expected, abs=1e-3)


def test_focal_tversky_penalises_misses_more_than_false_alarms():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    miss, false_alarm = torch.full_like(target, -50.0), torch.full_like(target, -50.0)
    miss[..., :2, :] = 50.0
    false_alarm[..., :6, :] = 50.0
    loss = FocalTverskyLoss()
    assert loss(miss, target) > loss(false_alarm, target)
    both = NucleusLoss(mask_loss=loss)(torch.cat([miss, miss], 1), torch.cat([target, target * 0.5], 1))
    assert both > loss(miss, target), "the distance term is added"


# -- every entry point by one overlay --------------------------------------------------------------------------------
NETWORKS = ["unet_sharp", "eunet3plus", "eunet3plus_fusion"]


@parameterized.expand([(v,) for v in NETWORKS])
def test_network_variants_are_model_variants(variant):
    assert MODEL_VARIANTS[variant] == (f"networks/{variant}.json",)
    for configs in (["inference"], ["train", "evaluate"]):
        config = load_config(configs, variant=variant)
        assert config.get_parsed_content("model_file") == f"model_{variant}.pt"
        assert not config.get_parsed_content("organ_prompts") if "train" in configs else True


@pytest.mark.parametrize("variant", NETWORKS)
def test_network_trains_then_segments_through_the_bundle_and_slides(tmp_path, variant):
    """One epoch of the bundle's training command on the sample crops, then the trained weights through
    ``segment_slides.py --variant``, and exported to TorchScript for the Deploy app."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = tmp_path / "train"
    overlay = f"configs/networks/{variant}.json"
    train = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"['configs/train.json','{overlay}']",
             "--meta_file", "configs/metadata.json", "--dataset_dir", str(ROOT / "sample_data" / "monuseg"), "--output_dir", str(out),
             "--epochs", "1", "--val_interval", "1", "--patch_size", "[64,64]", "--crops_per_image", "1", "--images_per_batch", "2",
             "--num_workers", "0"]
    proc = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = out / "models" / f"model_{variant}.pt"
    assert weights.is_file() and (out / "history.jsonl").is_file()
    segment = [sys.executable, "scripts/segment_slides.py", str(first_sample()), "-o", str(tmp_path / "seg"), "--variant", variant,
               "-m", str(weights), "--no_progress"]
    proc = subprocess.run(segment, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = json.loads((tmp_path / "seg" / "report.json").read_text())["written"]
    assert summary["weights"] == str(weights) and summary["prompts"] == "generic"
    network = load_config("inference", variant=variant).get_parsed_content("network_def")
    network.load_state_dict(load_state_dict(weights))
    scripted = torch.jit.script(network.eval())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), network(x), atol=1e-5)
