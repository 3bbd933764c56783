"""Training throughput (patches/s) of GRU-Net and its ablations, against MONAI's BasicUNet measured in the same run.

    python scripts/benchmark_training.py                      # CPU, small batch
    python scripts/benchmark_training.py --device cuda --batch 32 --iters 20

Each variant is the config's ``network_def`` with an overlay from ``configs/ablations`` (the same networks the
ablation study trains). A step is forward, Dice+BCE loss, backward and an AdamW update on random patches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import BUNDLE_ROOT, load_config  # noqa: E402
from bundle.networks import count_parameters  # noqa: E402

VARIANTS = {
    "full": [],
    "no_gdam": ["configs/ablations/no_gdam.json"],
    "respath": ["configs/ablations/respath.json"],
    "plain": ["configs/ablations/plain.json"],
    "basicunet": ["configs/ablations/basicunet.json"],
}
BASELINE = "basicunet"


def width_overrides(variant: str, width: Optional[int]) -> Dict[str, object]:
    """Config overrides that scale ``variant`` to first-level width ``width`` (``None``: the configs' own sizes).

    GRU-Net variants get ``features=width`` and 2 CDRB units (the ``light`` network of ``model_summary.py`` at
    16); BasicUNet gets features ``width * (1, 2, 4, 8, 16, 1)``, its own 32-512 scaled the same way.
    """
    if width is None:
        return {}
    if variant == BASELINE:
        return {"network_def#features": [width * m for m in (1, 2, 4, 8, 16, 1)]}
    return {"network_def#features": width, "network_def#cdrb_units": 2}


def build(variant: str, device: torch.device, width: Optional[int] = None) -> torch.nn.Module:
    overlays = [str(BUNDLE_ROOT / p) for p in VARIANTS[variant]]
    parser = load_config(["train", *overlays], overrides=width_overrides(variant, width))
    return parser.get_parsed_content("network_def").to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(net: torch.nn.Module, device: torch.device, batch: int, size: int, warmup: int, iters: int, amp: bool) -> float:
    """Training patches per second of ``net`` (median of ``iters`` timed steps after ``warmup``)."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    net.train()
    times: List[float] = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    parser.add_argument("--width", type=int, default=None, help="scale every network to this first-level width")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if BASELINE not in names:
        names.append(BASELINE)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch} x {args.size}x{args.size}, amp {amp}, width {args.width or 'config'}")
    results: Dict[str, Dict[str, float]] = {}
    for variant in names:
        torch.manual_seed(0)
        net = build(variant, device, args.width)
        results[variant] = {"params": count_parameters(net), "pps": measure(net, device, args.batch, args.size, args.warmup, args.iters, amp)}
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = results[BASELINE]["pps"]
    print(f"| variant | parameters | training patches/s | vs {BASELINE} |")
    print("|---|---:|---:|---:|")
    for variant, r in results.items():
        print(f"| {variant} | {r['params'] / 1e6:.2f} M | {r['pps']:.1f} | {r['pps'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
