"""Size and CPU cost of GRU-Net configurations: parameters, BN statistics, GFLOPs and measured times.

    python scripts/model_summary.py                      # reference, default and light, 256x256, batch 2
    python scripts/model_summary.py --configs default light --repeats 5 --threads 2

Times are medians over ``--repeats`` timed runs after one warm-up, divided by the batch size (seconds per
patch). The configurations are timed in interleaved rounds, and each time is also given as a ratio to the
"default" configuration measured in the same run (always measured, even when not asked for, so the ratios
have a base). Forward: eval mode, no grad. Forward+backward: train mode, BCE-with-logits loss, no optimiser step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.networks.grunet import GRUNet, count_bn_statistics, count_parameters  # noqa: E402

BASE = "default"
CONFIGS: Dict[str, Callable[[], nn.Module]] = {
    # the authors' structure, prompts encoded by a 768-d DistilBERT-family encoder
    "reference": lambda: GRUNet(reference=True, text_prior=torch.zeros(16, 768)),
    # corrected design: per-image CDRB gate, DenseNet wiring, trainable text projection, 384-d MiniLM prior
    "default": lambda: GRUNet(text_prior=torch.zeros(16, 384)),
    # meant to train on CPU: half the widths and two CDRB units per level; default skip, gdam and gate
    "light": lambda: GRUNet(features=16, cdrb_units=2, text_prior=torch.zeros(16, 384)),
}


def gflops(net: nn.Module, size: int) -> float:
    """GFLOPs (FlopCounterMode flops / 1e9; a multiply-add counts 2) of one eval forward of a (1, C, size, size) patch."""
    net.eval()
    x = torch.randn(1, net.in_channels, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return counter.get_total_flops() / 1e9


def forward_step(net: nn.Module, size: int, batch: int) -> Callable[[], None]:
    """An eval, no-grad forward of a (batch, C, size, size) input."""
    x = torch.randn(batch, net.in_channels, size, size)

    def step() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    return step


def train_step(net: nn.Module, size: int, batch: int) -> Callable[[], None]:
    """A train-mode forward + BCE-with-logits loss + backward of a (batch, C, size, size) input (no optimiser step)."""
    x = torch.randn(batch, net.in_channels, size, size)
    target = (torch.rand(batch, net.out_channels, size, size) > 0.5).float()

    def step() -> None:
        net.train()
        net.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(net(x), target).backward()

    return step


def time_interleaved(steps: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds of each step: one warm-up each, then ``repeats`` rounds running every step once, so that
    a change of machine load during the run hits all configurations alike."""
    for step in steps.values():
        step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--size", type=int, default=256, help="patch side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the timed runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 16 != 0:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.batch < 2:
        parser.error("--batch must be >= 2 (BatchNorm in train mode on the 1/16-size bottleneck)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    names = [n for n in CONFIGS if n in args.configs or n == BASE]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} CPUs")
    print(f"patch {args.size}x{args.size}, batch {args.batch}, 1 warm-up + {args.repeats} interleaved timed runs (median)")
    nets = {name: CONFIGS[name]() for name in names}
    rows = {name: {"params": count_parameters(net), "bn": count_bn_statistics(net)} for name, net in nets.items()}
    for name, net in nets.items():
        rows[name]["gflops"] = gflops(net, args.size)
    fwd = time_interleaved({n: forward_step(net, args.size, args.batch) for n, net in nets.items()}, args.repeats)
    train = time_interleaved({n: train_step(net, args.size, args.batch) for n, net in nets.items()}, args.repeats)
    for name in names:
        rows[name]["fwd"] = fwd[name] / args.batch
        rows[name]["train"] = train[name] / args.batch

    load = os.getloadavg()[0]
    verdict = "other processes competed: times inflated" if load > 1.5 * torch.get_num_threads() else "no heavy competing load"
    print(f"1-min load average at the end: {load:.2f} ({verdict})")
    base = rows[BASE]
    header = (
        f"{'config':<10} {'params':>12} {'BN stats':>9} {'GFLOPs':>8} "
        f"{'fwd s/patch':>12} {'x default':>9} {'fwd+bwd s/patch':>16} {'x default':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        r = rows[name]
        print(
            f"{name:<10} {r['params']:>12,} {r['bn']:>9,} {r['gflops']:>8.2f} "
            f"{r['fwd']:>12.3f} {r['fwd'] / base['fwd']:>9.2f} {r['train']:>16.3f} {r['train'] / base['train']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
