"""The alternative networks (U-Net#, eU-Net3+ with and without fusion, DA-RefineNet) and their blocks: shapes,
TorchScript, frozen foundation encoders, the Focal Tversky loss, context views, and the overlays that select them
everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from parameterized import parameterized

from bundle.config_io import MODEL_VARIANTS, load_config
from bundle.errors import InputError
from bundle.data.transforms import RandContextCropd, RandHEDJitter, context_view
from bundle.io.slides import open_source, read_region_padded
from bundle.networks import DARefineNet, EUNet3Plus, GRUNet, UNetSharp
from bundle.pipeline.inferers import ContextWindowInferer, FlipTTAInferer, context_inferer
from bundle.networks.eunet3plus import EnhancedFusionBlock
from bundle.networks.foundation import GRUNetEncoder, SAMImageEncoder
from bundle.networks.full_scale import ConvNormAct, FullScaleDecoder
from bundle.training.checkpoints import load_state_dict
from bundle.training.losses import FocalTverskyLoss, NucleusLoss
from tests.helpers import ROOT, first_sample, tiled_tissue, write_slide

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
    ("DARefineNet", {"channels": [32, 16, 16, 16]}, (2, 6, 64, 64), (2, 2, 64, 64)),
    ("DARefineNet", {"channels": [16, 16, 8, 8], "layers": [2, 2, 2, 2], "context_scale": 2}, (1, 6, 96, 64), (1, 2, 96, 64)),
])
def test_network_shapes_and_torchscript_round_trip(name, kwargs, input_shape, expected):
    kwargs = {**kwargs, **({"foundation": small_foundation()} if kwargs.get("foundation") == "small" else {})}
    net = {"UNetSharp": UNetSharp, "EUNet3Plus": EUNet3Plus, "DARefineNet": DARefineNet}[name](**kwargs).eval()
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
    ("DARefineNet", {}, (1, 3, 64, 64), "the window and its context view"),
    ("DARefineNet", {}, (1, 6, 48, 64), "multiples of 32"),
])
def test_network_refuses_sides_it_cannot_halve(name, kwargs, input_shape, message):
    net = {"UNetSharp": UNetSharp, "EUNet3Plus": EUNet3Plus, "DARefineNet": DARefineNet}[name](**kwargs)
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


# -- context views (DA-RefineNet) -------------------------------------------------------------------------------------
@parameterized.expand([
    # image side, window, scale, window origin
    (160, 64, 4, (0, 0)),
    (160, 64, 4, (96, 48)),
    (200, 32, 2, (168, 100)),
])
def test_context_windows_see_the_views_training_sees(side, roi, scale, origin):
    """Every window of the inferer gets the view :func:`context_view` gives the training crop at its place."""
    x = torch.rand(1, 3, side, side)
    inferer = ContextWindowInferer((roi, roi), sw_batch_size=64, overlap=0.0, context_scale=scale)
    seen = []
    inferer(x, lambda t: seen.append(t.clone()) or t[:, :2].clone())  # MONAI scales the output in place
    windows = torch.cat(seen)
    starts = [(y, xx) for y in range(0, side - roi + 1, roi) for xx in range(0, side - roi + 1, roi)]
    if origin in starts:
        view = windows[starts.index(origin), 3:]
        assert torch.allclose(view, context_view(x[0], origin[0], origin[1], (roi, roi), scale), atol=1e-6)
    assert windows.shape[1] == 6 and torch.equal(windows[0, :3], x[0, :, :roi, :roi])


def test_rand_context_crop_stacks_window_and_view():
    image, label = torch.rand(3, 200, 180), torch.zeros(2, 200, 180)
    label[:, 80:120, 60:100] = 1
    crop = RandContextCropd(["image", "label"], "label", (64, 64), context_scale=4, pos=1, neg=0, num_samples=3)
    crop.set_random_state(0)
    out = crop({"image": image, "label": label})
    assert len(out) == 3 and all(o["image"].shape == (6, 64, 64) and o["label"].shape == (2, 64, 64) for o in out)
    assert all(o["label"][0].sum() > 0 for o in out), "positive crops hold nuclei"
    assert FlipTTAInferer(ContextWindowInferer((64, 64)), flips=None).inferer is not None


def test_hed_jitter_gives_every_view_the_same_draw():
    rgb = torch.rand(3, 16, 16) * 0.6 + 0.2
    jitter = RandHEDJitter(prob=1.0, sigma=0.3, bias=0.05)
    jitter.set_random_state(1)
    both = jitter(torch.cat([rgb, rgb]))
    assert both.shape == (6, 16, 16) and torch.allclose(both[:3], both[3:]) and not torch.allclose(both[:3], rgb)


def test_slide_tiles_read_their_context_from_the_slide(tmp_path):
    rgb = tiled_tissue(600, 700)
    source = open_source(write_slide(tmp_path / "s.tif", rgb))
    inside = read_region_padded(source, (100, 50, 300, 250), (100, 100))
    assert np.array_equal(inside, source.read_region(100, 50, 200, 200, (100, 100)))
    beyond = read_region_padded(source, (-100, -50, 300, 250), (150, 200))
    assert beyond.shape == (150, 200, 3) and np.array_equal(beyond[:25, 50:], np.repeat(beyond[25:26, 50:], 25, 0)), "edge repeated"
    segmenter = load_config("inference", overrides={"checkpoint": None, "progress": False, "runtime": "torch", "tile_size": 256,
                                                    "patch_size": [128, 128]}, variant="da_refinenet").get_parsed_content("segmenter")
    inferer = context_inferer(segmenter.predictor.inferer)
    assert isinstance(inferer, ContextWindowInferer) and inferer.margin() == (192, 192)
    from bundle.pipeline.segmenter import TileWindow

    window = TileWindow((256, 256, 512, 512), (192, 192, 576, 576), (384, 384), (64, 64, 320, 320), (1.0, 1.0))
    tile, extra = segmenter._read_tile(source, window)
    canvas = extra["context"]
    assert tile.shape == (384, 384, 3) and canvas.shape == (*inferer.canvas_shape(384, 384), 3)
    expected = source.read_region(0, 0, 700, 600, (150, 175))  # the canvas (0..768 of level 0) lies inside the slide here
    assert np.abs(canvas[:150, :175].astype(int) - expected.astype(int)).mean() < 8
    plain = load_config("inference", overrides={"checkpoint": None, "progress": False}).get_parsed_content("segmenter")
    assert "context" not in plain._read_tile(source, window)[1]


# -- every entry point by one overlay --------------------------------------------------------------------------------
NETWORKS = ["unet_sharp", "eunet3plus", "eunet3plus_fusion", "da_refinenet"]


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
    x = torch.rand(1, getattr(network, "input_channels", 3), 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), network(x), atol=1e-5)
