"""Inferers of bundle.pipeline.inferers: flip test-time augmentation, bfloat16 autocast."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from bundle.pipeline.inferers import AutocastInferer, FlipTTAInferer
from bundle.networks import GRUNet

CASES = [
    # (kwargs, input shape, expected output shape)
    ({}, (1, 3, 32, 32), (1, 1, 32, 32)),
    ({"flips": [[2], [3]]}, (2, 3, 32, 48), (2, 1, 32, 48)),
    ({"flips": [[]]}, (1, 3, 16, 32), (1, 1, 16, 32)),
]


@pytest.mark.parametrize("kwargs, in_shape, out_shape", CASES)
def test_shape(kwargs, in_shape, out_shape):
    net = GRUNet(features=4).eval()
    with torch.no_grad():
        out = FlipTTAInferer(SimpleInferer(), **kwargs)(torch.rand(in_shape), net)
    assert out.shape == out_shape and torch.isfinite(out).all()


def test_mean_of_flipped_probabilities():
    torch.manual_seed(0)
    net = GRUNet(features=4, distance_head=True).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = FlipTTAInferer(SimpleInferer())(x, net)
        expected = torch.stack(
            [torch.sigmoid(torch.flip(net(torch.flip(x, d)), d)) for d in ((), (2,), (3,), (2, 3))]
        ).mean(0)
    assert out.shape == (1, 2, 32, 32)
    torch.testing.assert_close(torch.sigmoid(out), expected, atol=1e-5, rtol=1e-5)


def test_identity_is_the_wrapped_inferer():
    net = GRUNet(features=4).eval()
    x = torch.rand(1, 3, 64, 64)
    sliding = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer(sliding, flips=[[]])(x, net), sliding(x, net))


def test_flip_equivariant_network_is_unchanged():
    net = torch.nn.Conv2d(3, 1, 1)  # a 1x1 convolution commutes with flips
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer(SimpleInferer())(x, net), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flips", [[], [[1]], [[2, 4]]])
def test_bad_flips(flips):
    with pytest.raises(ValueError, match="flips must be a non-empty list of dims among"):
        FlipTTAInferer(SimpleInferer(), flips=flips)


class ConvDtype(torch.nn.Module):
    """A convolution that records the dtype it computed in."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.dtype = None

    def forward(self, x):
        y = self.conv(x)
        self.dtype = y.dtype
        return y


@pytest.mark.parametrize("bf16, computed", [(True, torch.bfloat16), (False, torch.float32)])
def test_autocast_inferer(bf16, computed):
    net = ConvDtype()
    x = torch.rand(2, 3, 16, 16)
    out = AutocastInferer(bf16=bf16)(x, net)
    assert out.shape == (2, 2, 16, 16) and out.dtype == torch.float32 and net.dtype == computed
    out.mean().backward()  # a training step's backward goes through the autocast region
    assert net.conv.weight.grad is not None and net.conv.weight.grad.dtype == torch.float32


def test_autocast_inferer_auto_and_bad_setting():
    from bundle.pipeline.runtimes import cpu_bf16_is_fast

    net = ConvDtype()
    AutocastInferer(bf16="auto")(torch.rand(1, 3, 8, 8), net)
    assert net.dtype == (torch.bfloat16 if cpu_bf16_is_fast() else torch.float32)
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto'"):
        AutocastInferer(bf16="fast")
