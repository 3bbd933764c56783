"""Training throughput (patches/s), GFLOPs and network inference speed (Mpx/s) of GRU-Net, its ablations and the
alternative networks, against MONAI's BasicUNet measured in the same run.

    python scripts/benchmark_training.py                      # CPU, small batch
    python scripts/benchmark_training.py --variants full,compact,basicunet --options fp32,channels_last,bf16_channels_last --batch 8
    python scripts/benchmark_training.py --device cuda --batch 32 --iters 20

The variants are the full model (``configs/train.json``'s ``network_def``), the compact one (``configs/compact.json``)
and one per overlay file in ``configs/ablations/`` and ``configs/networks/`` (named after the file: the networks the
ablation study trains, and U-Net#, eU-Net3+ with and without fusion, DA-RefineNet);
each runs under every execution option asked (fp32 eager, ``channels_last``, bf16 autocast with ``channels_last``),
against BasicUNet in fp32, always measured. A step is what training
does: forward, the config's ``loss`` (:class:`bundle.training.losses.NucleusLoss`: Dice + cross-entropy on the
mask, plus the distance terms for a network with a distance head) against the two-channel targets of
:class:`bundle.data.targets.NucleusTargetsd` (mask and normalised distance of synthetic nuclei), backward and an
AdamW update, under the config's mixed precision on CUDA. For fp32 rows also: GFLOPs of one 256x256 forward pass
and the network alone at inference (eval, no grad, batch ``--batch``) in Mpx/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.allocator import keep_freed_memory  # noqa: E402
from bundle.config_io import BUNDLE_ROOT, load_config  # noqa: E402
from bundle.data.targets import NucleusTargetsd  # noqa: E402
from bundle.networks import count_parameters  # noqa: E402
from bundle.pipeline.runtimes import input_channels  # noqa: E402

ABLATIONS_DIR = "configs/ablations"
NETWORKS_DIR = "configs/networks"
FULL = "full"
COMPACT = "compact"
BASELINE = "basicunet"
# execution option: (channels_last, bf16 autocast)
OPTIONS = {"fp32": (False, False), "channels_last": (True, False), "bf16_channels_last": (True, True)}


def ablation_variants(root: Path = BUNDLE_ROOT) -> Dict[str, List[str]]:
    """``{"full": [], "compact": ["configs/compact.json"], <overlay stem>: ["configs/ablations/<stem>.json"], ...}``:
    the full model, the compact one, then one variant per overlay file in ``configs/ablations`` and in
    ``configs/networks`` (the alternative networks), sorted by name; paths relative to the bundle root."""
    overlays = sorted((Path(root) / ABLATIONS_DIR).glob("*.json")) + sorted((Path(root) / NETWORKS_DIR).glob("*.json"))
    return {FULL: [], COMPACT: [f"configs/{COMPACT}.json"], **{p.stem: [str(p.relative_to(root))] for p in overlays}}


VARIANTS = ablation_variants()


def _replaces_network(variant: str) -> bool:
    """Whether the variant's overlays put another network than GRU-Net in ``network_def`` (BasicUNet)."""
    for overlay in VARIANTS.get(variant, []):
        net = json.loads((BUNDLE_ROOT / overlay).read_text()).get("network_def")
        if isinstance(net, dict) and "GRUNet" not in str(net.get("_target_", "")):
            return True
    return False


def width_overrides(variant: str, width: Optional[int]) -> Dict[str, object]:
    """Config overrides that scale ``variant`` to first-level width ``width`` (``None``: the configs' own sizes).

    GRU-Net variants get ``features=width`` and 2 CDRB units (the ``light`` network of ``model_summary.py`` at
    16); BasicUNet gets features ``width * (1, 2, 4, 8, 16, 1)``, its own 32-512 scaled the same way; the
    alternative networks of ``configs/networks`` keep their overlay's sizes (already CPU-sized).
    """
    if width is None:
        return {}
    if variant == BASELINE:
        return {"network_def#features": [width * m for m in (1, 2, 4, 8, 16, 1)]}
    if _replaces_network(variant):
        return {}
    return {"network_def#features": width, "network_def#cdrb_units": 2}


def variant_config(variant: str, width: Optional[int] = None):
    """The training config (``configs/train.json`` with the variant's overlays) of ``variant``."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    overlays = [str(BUNDLE_ROOT / p) for p in VARIANTS[variant]]
    return load_config(["train", *overlays], overrides=width_overrides(variant, width))


def build(variant: str, device: torch.device, width: Optional[int] = None) -> torch.nn.Module:
    """The variant's network, on ``device``."""
    return variant_config(variant, width).get_parsed_content("network_def").to(device)


def synthetic_batch(batch: int, size: int, seed: int = 0, channels: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random (batch, channels, size, size) images and the (batch, 2, size, size) targets training uses
    (:class:`~bundle.data.targets.NucleusTargetsd`) of random disks, about one nucleus of radius 3-8 px per
    20x20 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    to_targets = NucleusTargetsd(keys="label")
    targets = []
    for _ in range(batch):
        labels = np.zeros((1, size, size), np.int32)
        for i in range(1, max(1, size * size // 400) + 1):
            radius, (cy, cx) = rng.uniform(3, 8), rng.uniform(0, size, 2)
            labels[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
        targets.append(to_targets({"label": torch.from_numpy(labels)})["label"])
    images = torch.from_numpy(rng.random((batch, channels, size, size), dtype=np.float32))
    return images, torch.stack(targets)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    net: torch.nn.Module,
    loss_fn: torch.nn.Module,
    device: torch.device,
    batch: int,
    size: int,
    warmup: int,
    iters: int,
    amp: bool,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
) -> float:
    """Training patches per second of ``net`` with ``loss_fn`` (median of ``iters`` timed steps after ``warmup``),
    under autocast to ``amp_dtype`` when ``amp``, in ``channels_last`` memory format when asked."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    x, y = (t.to(device) for t in synthetic_batch(batch, size, channels=input_channels(net)))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    times: List[float] = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]


@torch.no_grad()
def measure_inference(net: torch.nn.Module, device: torch.device, batch: int, size: int, warmup: int, iters: int) -> Tuple[float, float]:
    """GFLOPs of one (1, C, size, size) forward pass (``torch.utils.flop_counter``: a multiply-add is 2 FLOPs, as in
    ``scripts/model_summary.py``) and
    the network's inference speed in Mpx/s (eval mode, no grad, median of ``iters`` batches after ``warmup``)."""
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()
    x = torch.rand(batch, input_channels(net), size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x[:1])
    times: List[float] = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        net(x)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return counter.get_total_flops() / 1e9, batch * size * size / 1e6 / times[len(times) // 2]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--options", default="fp32", help=f"comma list of execution options {list(OPTIONS)}; on CUDA fp32 means the config's amp")
    parser.add_argument("--width", type=int, default=None, help="scale every network to this first-level width")
    args = parser.parse_args(argv)
    keep_freed_memory()
    device = torch.device(args.device)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [n for n in names if n not in VARIANTS] + [o for o in options if o not in OPTIONS]
    if unknown:
        parser.error(f"unknown variants or options {unknown}; choose from {list(VARIANTS)} and {list(OPTIONS)}")
    baseline = BASELINE if BASELINE in VARIANTS else FULL  # the ratios' base (fp32), always measured
    runs = [(baseline, "fp32")] + [(v, o) for v in names for o in options if (v, o) != (baseline, "fp32")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch} x {args.size}x{args.size}, width {args.width or 'config'}")
    results: Dict[Tuple[str, str], Dict[str, float]] = {}
    for variant, option in runs:
        torch.manual_seed(0)
        config = variant_config(variant, args.width)
        net = config.get_parsed_content("network_def").to(device)
        loss_fn = config.get_parsed_content("loss")
        channels_last, bf16 = OPTIONS[option]
        amp = bf16 or (device.type == "cuda" and bool(config.get_parsed_content("amp")))
        amp_dtype = torch.bfloat16 if bf16 else (config.get_parsed_content("amp_kwargs").get("dtype") if amp else None)
        pps = measure(net, loss_fn, device, args.batch, args.size, args.warmup, args.iters, amp, amp_dtype, channels_last)
        gflops, mpx = measure_inference(net, device, args.batch, args.size, args.warmup, args.iters) if option == "fp32" else (float("nan"),) * 2
        results[(variant, option)] = {"params": count_parameters(net), "pps": pps, "gflops": gflops, "mpx": mpx}
        print(f"{variant} {option}: {pps:.2f} patches/s, {mpx:.3f} Mpx/s inference", file=sys.stderr, flush=True)
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base, base_mpx = results[(baseline, "fp32")]["pps"], results[(baseline, "fp32")]["mpx"]
    print(f"| variant | option | parameters | training patches/s | vs {baseline} fp32 | GFLOPs / patch | inference Mpx/s (network) | vs {baseline} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (variant, option), r in results.items():
        print(f"| {variant} | {option} | {r['params'] / 1e6:.2f} M | {r['pps']:.2f} | {r['pps'] / base:.2f}x | {r['gflops']:.1f} | "
              f"{r['mpx']:.3f} | {r['mpx'] / base_mpx:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
