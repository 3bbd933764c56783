"""Tests of :class:`bundle.networks.grunet.GRUNet`: shapes, reference sizes, determinism, batch independence,
TorchScript export and input validation (in the style of MONAI's ``test_basic_unet.py``)."""

from __future__ import annotations

import pytest
import torch

from bundle.networks.blocks import CDRB
from bundle.networks.grunet import GRUNet, count_bn_statistics, count_parameters

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# ---------------------------------------------------------------------------------------------------------------
# shapes: (kwargs, input shape, expected output shape), configurations crossed with sizes
# ---------------------------------------------------------------------------------------------------------------
CONFIGS = [
    {"features": 8},
    {"features": 4, "skip": "cdrb"},
    {"features": 4, "skip": "respath"},
    {"features": 4, "skip": "plain"},
    {"features": 4, "gdam": False},
    {"features": 4, "gdam": True, "gate": "sample"},
    {"features": 4, "gate": "batch"},
    {"features": 4, "gate": "pooled"},
    {"features": 4, "repeat_channels": True},
    {"features": 4, "repeat_channels": False},
    {"features": 4, "cdrb_units": 1},
    {"features": 4, "cdrb_units": 2},
    {"features": 4, "cdrb_units": 3},
    {"features": 4, "cdrb_units": 4},
    {"features": 4, "out_channels": 2},
    {"features": 4, "in_channels": 1},
    {"features": 4, "dropout": 0.1},
    {"features": 4, "skip": "respath", "gdam": False},
    {"features": 4, "reference": True, "text_prior": torch.randn(16, 768)},
    {"features": 4, "distance_head": True},
    {"features": 4, "distance_head": True, "out_channels": 2, "gdam": False},
]
SIZES = [(1, 16, 16), (2, 32, 48), (1, 64, 80)]  # (batch, H, W)

SHAPE_CASES = []
for _kwargs in CONFIGS:
    for _b, _h, _w in SIZES:
        SHAPE_CASES.append(
            (
                _kwargs,
                (_b, _kwargs.get("in_channels", 3), _h, _w),
                (_b, _kwargs.get("out_channels", 1) + int(_kwargs.get("distance_head", False)), _h, _w),
            )
        )


@pytest.mark.parametrize("kwargs, in_shape, out_shape", SHAPE_CASES)
def test_shape(kwargs, in_shape, out_shape):
    net = GRUNet(**kwargs).to(DEVICE).eval()
    with torch.no_grad():
        out = net(torch.randn(in_shape, device=DEVICE))
    assert out.shape == out_shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------
# sizes of the reference-faithful network (note grunet.md, section 6)
# ---------------------------------------------------------------------------------------------------------------
REFERENCE_PART_CASES = [
    ("stem", 5979),
    ("encoder.0", 36048),
    ("encoder.1", 147130),
    ("encoder.2", 592140),
    ("bottleneck", 2368994),
    ("skips.0", 203060),
    ("skips.1", 825962),
    ("skips.2", 3321045),
    ("skips.3", 13318571),
    ("gdam", 1661974),
    ("decoder.0.up", 873728),  # deepest first
    ("decoder.1.up", 218240),
    ("decoder.2.up", 54336),
    ("decoder.3.up", 13472),
    ("decoder.0.block", 911640),
    ("decoder.1.block", 226707),
    ("decoder.2.block", 55914),
    ("decoder.3.block", 13482),
    ("head", 52),
    ("text_projection", 0),  # frozen random projections: buffers, not parameters
]


@pytest.fixture(scope="module")
def reference_net():
    return GRUNet(reference=True, text_prior=torch.randn(16, 768))


def test_reference_totals(reference_net):
    assert count_parameters(reference_net) == 24_848_474
    assert count_bn_statistics(reference_net) == 31_048


@pytest.mark.parametrize("part, expected", REFERENCE_PART_CASES)
def test_reference_part_counts(reference_net, part, expected):
    assert count_parameters(reference_net.get_submodule(part)) == expected


def test_reference_parts_sum_to_total(reference_net):
    assert sum(count for _, count in REFERENCE_PART_CASES) == count_parameters(reference_net)


def test_reference_cdrb_structure(reference_net):
    level4 = reference_net.skips[3]
    assert isinstance(level4, CDRB) and level4.gate == "batch" and level4.repeat_channels
    assert [u.conv.conv.in_channels for u in level4.units] == [426, 682, 1364, 2728]
    assert not reference_net.text_projection.trainable


def test_multiresunet_count():
    assert count_parameters(GRUNet(skip="respath", gdam=False)) == 7_244_774


def test_default_design():
    net = GRUNet()
    assert net.text_projection is not None and net.text_projection.trainable
    assert count_parameters(net.text_projection) > 0
    assert tuple(net.text_prior.shape) == (16, 384)
    for skip in net.skips:
        assert isinstance(skip, CDRB) and skip.gate == "sample" and not skip.repeat_channels
        assert len(skip.units) == 4


# ---------------------------------------------------------------------------------------------------------------
# determinism and GdAM sampling
# ---------------------------------------------------------------------------------------------------------------
DETERMINISM_CASES = [
    {"features": 8},
    {"features": 8, "reference": True, "text_prior": torch.randn(16, 768)},
]


@pytest.mark.parametrize("kwargs", DETERMINISM_CASES)
def test_eval_is_deterministic(kwargs):
    torch.manual_seed(0)
    net = GRUNet(**kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("kwargs", DETERMINISM_CASES)
def test_train_mode_samples_attention(kwargs):
    torch.manual_seed(0)
    net = GRUNet(**kwargs).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gdam_sampling_gradient_stays_finite_where_its_variance_vanishes(dtype):
    """The sd head at -200 (softplus 0) and a dead text branch (variance 0): sqrt(0) without a floor."""
    from bundle.networks.blocks import GdAM

    torch.manual_seed(0)
    gdam = GdAM(in_channels=8, features=4, num_scales=2).train()
    torch.nn.init.constant_(gdam.sd_head.pointwise.bias, -200.0)
    for up in gdam.text_up:  # ReLU(-1) = 0 everywhere
        torch.nn.init.zeros_(up.weight)
        torch.nn.init.constant_(up.bias, -1.0)
    bottleneck = torch.randn(1, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        maps = gdam(bottleneck, torch.ones(1, 1, 4, 4), sample=True)
        loss = sum(m.float().sum() for m in maps)
    loss.backward()
    grads = [bottleneck.grad] + [p.grad for p in gdam.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


GDAM_START_CASES = [
    # GRUNet kwargs, expected (min, max) of the sampled attention's standard deviation at initialisation
    [{"features": 8}, (0.0, 0.15)],  # identity start: 1 + mean(text) with little noise
    [{"features": 8, "gdam_identity_start": False}, (0.4, 1.5)],  # Glorot heads: noise as large as the mean
    [{"features": 8, "reference": True, "text_prior": torch.randn(16, 768)}, (0.4, 1.5)],
]


@pytest.mark.parametrize("kwargs, sd_range", GDAM_START_CASES)
def test_gdam_start(kwargs, sd_range):
    """At initialisation the training samples of every decoder level's attention have the expected spread."""
    torch.manual_seed(0)
    net = GRUNet(**kwargs).train()
    with torch.no_grad():
        _, bottleneck = net.encode(torch.randn(2, 3, 64, 64))
        maps = net.gdam(bottleneck, net.text_projection(net.text_prior), True)
    assert len(maps) == 4
    for level, attention in enumerate(maps):
        assert attention.shape == (2, 1, 8 * 2**level, 8 * 2**level)
        assert sd_range[0] <= attention.std().item() <= sd_range[1]
        if kwargs.get("gdam_identity_start", not kwargs.get("reference", False)):
            assert attention.min().item() > 0.5  # never flips the sign of a feature


def test_gdam_start_is_replaced_by_loaded_weights():
    """The identity start is an initialisation only: loaded weights replace it."""
    torch.manual_seed(0)
    glorot = GRUNet(features=8, gdam_identity_start=False)
    identity = GRUNet(features=8)
    identity.load_state_dict(glorot.state_dict())
    assert torch.equal(identity.gdam.mu_head.pointwise.weight, glorot.gdam.mu_head.pointwise.weight)


def test_train_mode_without_gdam_is_deterministic():
    """Control for the test above: with no GdAM (and no dropout) a training-mode pass has no randomness."""
    torch.manual_seed(0)
    net = GRUNet(features=8, gdam=False).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_set_attention_sampling():
    torch.manual_seed(0)
    net = GRUNet(features=8).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        net.set_attention_sampling(True)
        assert not torch.allclose(net(x), net(x))
        net.set_attention_sampling(False)
        assert torch.equal(net(x), net(x))


# ---------------------------------------------------------------------------------------------------------------
# batch (in)dependence: the reference's batch-mean CDRB gate couples the images of a batch
# ---------------------------------------------------------------------------------------------------------------
BATCH_INDEPENDENT_CASES = [
    {"features": 8},
    {"features": 8, "gate": "pooled"},
    {"features": 8, "skip": "respath", "gdam": False},
]
BATCH_DEPENDENT_CASES = [
    {"features": 8, "reference": True, "text_prior": torch.randn(16, 768)},
    {"features": 8, "gate": "batch"},
]


def _single_and_batched(kwargs):
    torch.manual_seed(0)
    net = GRUNet(**kwargs).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        return net(x[:1]), net(x)[:1]


@pytest.mark.parametrize("kwargs", BATCH_INDEPENDENT_CASES)
def test_batch_independence(kwargs):
    alone, in_batch = _single_and_batched(kwargs)
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", BATCH_DEPENDENT_CASES)
def test_batch_dependence(kwargs):
    alone, in_batch = _single_and_batched(kwargs)
    assert (alone - in_batch).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# TorchScript export (needed by ckpt_export and MONAI Deploy)
# ---------------------------------------------------------------------------------------------------------------
EXPORT_CASES = [
    {"features": 8},
    {"features": 8, "reference": True, "text_prior": torch.randn(16, 768)},
    {"features": 8, "skip": "respath", "gdam": False},
    {"features": 8, "distance_head": True},
]


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kwargs", EXPORT_CASES)
def test_torchscript_round_trip(kwargs, tmp_path):
    torch.manual_seed(0)
    net = GRUNet(**kwargs).eval()
    x = torch.randn(2, 3, 32, 48)
    scripted = torch.jit.script(net)
    path = tmp_path / "grunet.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# validation: one pytest.raises per branch
# ---------------------------------------------------------------------------------------------------------------
INIT_ERROR_CASES = [
    ({"skip": "unet"}, r"skip must be one of"),
    ({"gate": "mean"}, r"gate must be one of"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"features": 0}, r"features must be > 0"),
    ({"in_channels": 0}, r"in_channels must be > 0"),
    ({"out_channels": -1}, r"out_channels must be > 0"),
    ({"text_prior": torch.zeros(1, 16, 384)}, r"text_prior must be \(n_prompts, dim\)"),
]


@pytest.mark.parametrize("kwargs, match", INIT_ERROR_CASES)
def test_init_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRUNet(**{"features": 4, **kwargs})


FORWARD_ERROR_CASES = [
    ({}, (1, 3, 20, 32), r"multiples of 16"),
    ({}, (1, 3, 32, 40), r"multiples of 16"),
    ({}, (1, 1, 32, 32), r"expects input of shape \(B, 3, H, W\)"),
    ({}, (3, 32, 32), r"expects input of shape \(B, 3, H, W\)"),
    ({"in_channels": 1}, (1, 3, 32, 32), r"expects input of shape \(B, 1, H, W\)"),
]


@pytest.mark.parametrize("kwargs, in_shape, match", FORWARD_ERROR_CASES)
def test_forward_errors(kwargs, in_shape, match):
    net = GRUNet(**{"features": 4, **kwargs}).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        net(torch.randn(in_shape))
