"""Speed of the nucleus pipeline per execution option, against MONAI's BasicUNet measured in the same run.

    python scripts/benchmark_speed.py                                   # the 4 sample crops, every option
    python scripts/benchmark_speed.py --dataset_dir <MoNuSeg>/train --images 2 --threads 2  # a folder with images/ and masks/

Each option runs in a fresh process (so that its peak RSS is its own) on the same images, with the machine's
thread count stated: end-to-end megapixels per second (read -> tiles -> network -> instances -> files, the
bundle's ``NucleusSegmenter.segment``) and network-only megapixels per second (the predictor on the decoded image:
sliding window and network); the ratio of each to BasicUNet (features 32..256, fp32, eager, through the same
pipeline, with the trained weights of ``models/basicunet_yardstick.pt`` so that its instances and files cost what
a working model's do: untrained weights gave a few image-sized blobs whose polygons cost more than its network);
the runtime and precision each option ran as (``grunet_auto`` and ``compact_auto`` are the configs as shipped);
achieved GFLOP/s of the network (FlopCounterMode FLOPs of the windows run, over the network time) against the
CPU's peak (cores x clock x FP32 FLOPs per cycle per core, stated); the agreement of each option with
fp32 eager of the same network (shipped ``grunet`` or ``compact`` GRU-Net: Dice between the two masks, AJI
difference); and, when the images have masks, each option's Dice and AJI against the truth. The compact rows need
``models/model_compact.pt``. Prints one Markdown table; ``--output`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

YARDSTICK = Path(__file__).resolve().parents[1] / "models" / "basicunet_yardstick.pt"  # BasicUNet 32..256, trained
# option: overrides of configs/inference.json; "variant" picks the model variant (bundle.config_io.MODEL_VARIANTS)
TORCH = {"runtime": "torch", "bf16": False}
OPENVINO = {"runtime": "openvino", "bf16": False}
OPTIONS: Dict[str, Dict[str, Any]] = {
    "grunet_auto": {},  # the configs as shipped: runtime and bf16 "auto" (what every entry point runs on this CPU)
    "grunet_fp32": {**TORCH, "channels_last": False},
    "grunet_channels_last": {**TORCH, "channels_last": True},
    "grunet_bf16_channels_last": {**TORCH, "bf16": True, "channels_last": True},
    "grunet_openvino": OPENVINO,
    "grunet_openvino_bf16": {**OPENVINO, "bf16": True},
    "grunet_onnxruntime": {"runtime": "onnxruntime", "bf16": False},
    "grunet_512_windows": {**TORCH, "channels_last": True, "window_size": [512, 512], "sw_overlap": 0.125},
    # window size and overlap per 1000x1000 image (bf16 + channels_last; the default 272/0.1 runs 16 windows = 1.18 Mpx)
    "grunet_bf16_w256_o0.25": {**TORCH, "bf16": True, "channels_last": True, "window_size": [256, 256], "sw_overlap": 0.25},  # 25, 1.64 Mpx (0.6.0)
    "grunet_bf16_w256_o0.03": {**TORCH, "bf16": True, "channels_last": True, "window_size": [256, 256], "sw_overlap": 0.03},  # 16, 1.05 Mpx
    "grunet_bf16_w272_o0.1": {**TORCH, "bf16": True, "channels_last": True, "window_size": [272, 272], "sw_overlap": 0.1},  # 16, 1.18 Mpx
    "grunet_bf16_w288_o0.17": {**TORCH, "bf16": True, "channels_last": True, "window_size": [288, 288], "sw_overlap": 0.17},  # 16, 1.33 Mpx
    "grunet_bf16_w384_o0.18": {**TORCH, "bf16": True, "channels_last": True, "window_size": [384, 384], "sw_overlap": 0.18},  # 9, 1.33 Mpx
    "grunet_bf16_w512_o0.04": {**TORCH, "bf16": True, "channels_last": True, "window_size": [512, 512], "sw_overlap": 0.04,
                               "sw_batch_size": 1},  # 4 windows, 1.05 Mpx
    "grunet_bf16_batch1": {**TORCH, "bf16": True, "channels_last": True, "sw_batch_size": 1},
    "compact_auto": {"variant": "compact"},
    "compact_fp32": {"variant": "compact", **TORCH, "channels_last": False},
    "compact_channels_last": {"variant": "compact", **TORCH, "channels_last": True},
    "compact_bf16_channels_last": {"variant": "compact", **TORCH, "bf16": True, "channels_last": True},
    "compact_torch_compile": {"variant": "compact", **TORCH, "runtime": "torch_compile", "channels_last": True},
    "compact_openvino": {"variant": "compact", **OPENVINO},
    "compact_openvino_bf16": {"variant": "compact", **OPENVINO, "bf16": True},
    "compact_onnxruntime": {"variant": "compact", "runtime": "onnxruntime", "bf16": False},
    "basicunet_fp32": {**TORCH, "channels_last": False, "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                                       "features": [32, 32, 64, 128, 256, 32]},
                       "checkpoint": str(YARDSTICK)},
}
BASELINE = "basicunet_fp32"


def reference_of(option: str) -> str:
    """The fp32 eager option of the same network (``compact_openvino`` -> ``compact_fp32``): masks are compared to it."""
    return option.split("_")[0] + "_fp32"


def list_images(dataset_dir: Path, count: int) -> List[Dict[str, Optional[str]]]:
    """The first ``count`` images (the validation split of a dataset with masks/, else the folder's images)."""
    from bundle.data.datalists import make_split

    if (dataset_dir / "masks").is_dir():
        items = make_split(str(dataset_dir))["validation"]
        return [{"image": d["image"], "label": d["label"]} for d in items[:count]]
    folder = dataset_dir / "images" if (dataset_dir / "images").is_dir() else dataset_dir
    return [{"image": str(p), "label": None} for p in sorted(folder.glob("*.png"))[:count]]


def windows(size: int, roi: int, overlap: float) -> int:
    """Sliding-window positions along one axis (MONAI's scan: interval roi * (1 - overlap))."""
    if size <= roi:
        return 1
    interval = max(1, int(roi * (1 - overlap)))
    return math.ceil((size - roi) / interval) + 1


def worker(option: str, images: List[Dict[str, Optional[str]]], out_dir: Path, threads: int) -> Dict[str, Any]:
    """Run one option on every image; save its instance maps; return timings, FLOPs and peak RSS."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bundle.config_io import load_config
    from bundle.io.images import read_rgb

    torch.set_num_threads(threads)
    torch.manual_seed(0)  # the same untrained weights in every run (light GRU-Net, BasicUNet)
    overrides = {"progress": False, "device": "$torch.device('cpu')", **OPTIONS[option]}
    variant = overrides.pop("variant", "full")
    config = load_config("inference", overrides=overrides, variant=variant)
    segmenter = config.get_parsed_content("segmenter")
    predictor = segmenter.predictor
    roi, overlap = predictor.patch_size[0], float(config.get_parsed_content("sw_overlap"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        segmenter.network(torch.zeros(1, 3, roi, roi))
    flops_per_window = counter.get_total_flops()
    predictor(np.zeros((2 * roi, 2 * roi, 3), np.uint8))  # warm-up: every window batch size (and compilation)
    end_to_end = network = mpx = flops = 0.0
    nuclei = 0
    for item in images:
        rgb = read_rgb(item["image"])
        h, w = rgb.shape[:2]
        t0 = time.perf_counter()
        predictor(rgb)
        network += time.perf_counter() - t0
        flops += flops_per_window * windows(h, roi, overlap) * windows(w, roi, overlap)
        t0 = time.perf_counter()
        summary = segmenter.segment(item["image"], out_dir)
        end_to_end += time.perf_counter() - t0
        mpx += h * w / 1e6
        nuclei += int(summary["nucleus_count"])
        np.save(out_dir / f"{summary['name']}.npy", __import__("tifffile").imread(summary["files"]["instances"]))
    return {
        "option": option, "megapixels": mpx, "nuclei": nuclei, "bf16": bool(segmenter.bf16), "runtime": segmenter.runtime, "end_to_end_s": end_to_end, "network_s": network,
        "end_to_end_mpx_s": mpx / end_to_end, "network_mpx_s": mpx / network, "gflop_s": flops / network / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def cpu_peak_gflops(threads: int) -> Dict[str, Any]:
    """cores x clock x FP32 FLOPs per cycle per core: 64 with AVX-512 on two 512-bit FMA units (Intel), 32 where
    AVX-512 runs on two 256-bit FMA units (AMD Zen 4, family 25) and with AVX2, 8 otherwise. bfloat16 does twice
    the FP32 rate where :func:`bundle.pipeline.runtimes.cpu_bf16_is_fast` (AMX, or AVX-512 BF16 on AMD)."""
    from bundle.pipeline.runtimes import cpu_bf16_is_fast

    flags, mhz, model, vendor, family = "", 0.0, platform.processor(), "", 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = value
            elif key == "cpu MHz" and not mhz:
                mhz = float(value)
            elif key == "model name":
                model = value.strip()
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "cpu family" and not family:
                family = int(value)
    flags = flags.split()
    double_pumped = vendor == "AuthenticAMD" and family <= 25  # Zen 4 splits 512-bit operations in two
    per_cycle = 64 if "avx512f" in flags and not double_pumped else 32 if "avx2" in flags else 8
    return {
        "cpu": model, "vendor": vendor, "threads": threads, "clock_ghz": mhz / 1e3, "fp32_flops_per_cycle": per_cycle,
        "bf16_hardware": any(f in flags for f in ("avx512_bf16", "amx_bf16")), "bf16_fast": cpu_bf16_is_fast(),
        "peak_gflop_s": threads * mhz / 1e3 * per_cycle,
    }


def agreement(option_dir: Path, reference_dir: Path, images: List[Dict[str, Optional[str]]]) -> Dict[str, float]:
    """Dice between the option's and the reference's masks; mean AJI of each against the truth (when known)."""
    from bundle.data.targets import instance_labels
    from bundle.evaluation.metrics import aggregated_jaccard_index
    from bundle.io.images import read_mask

    dice, dice_truth, aji, aji_ref = [], [], [], []
    for item in images:
        name = Path(item["image"]).stem
        a, b = np.load(option_dir / f"{name}.npy"), np.load(reference_dir / f"{name}.npy")
        dice.append(2.0 * ((a > 0) & (b > 0)).sum() / max(1, (a > 0).sum() + (b > 0).sum()))
        if item["label"]:
            truth = instance_labels(read_mask(item["label"]))
            dice_truth.append(2.0 * ((a > 0) & (truth > 0)).sum() / max(1, (a > 0).sum() + (truth > 0).sum()))
            aji.append(aggregated_jaccard_index(truth, a))
            aji_ref.append(aggregated_jaccard_index(truth, b))
    out = {"dice_vs_fp32": float(np.mean(dice))}
    if aji:
        out.update(dice=float(np.mean(dice_truth)), aji=float(np.mean(aji)), aji_minus_fp32=float(np.mean(aji) - np.mean(aji_ref)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=str(Path(__file__).resolve().parents[1] / "sample_data" / "monuseg"))
    parser.add_argument("--images", type=int, default=4, help="how many images (the validation split's first ones)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma list of {', '.join(OPTIONS)}")
    parser.add_argument("--output", default=None, help="JSON file for the figures")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    images = list_images(Path(args.dataset_dir), args.images)
    if not images:
        print(f"error: no images in {args.dataset_dir}", file=sys.stderr)
        return 1
    if args.worker:
        result = worker(args.worker, images, Path(args.work_dir), args.threads)
        print("RESULT " + json.dumps(result))
        return 0
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = set(options) - set(OPTIONS)
    if unknown:
        print(f"error: unknown options {sorted(unknown)}; choose from {', '.join(OPTIONS)}", file=sys.stderr)
        return 1
    references = {reference_of(o) for o in options} | {BASELINE}
    options = [o for o in OPTIONS if o in references] + [o for o in OPTIONS if o in set(options) - references]  # yardsticks first
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="benchmark_speed_") as tmp:
        for option in options:
            work = Path(tmp) / option
            work.mkdir()
            cmd = [sys.executable, __file__, "--worker", option, "--work_dir", str(work), "--dataset_dir", args.dataset_dir,
                   "--images", str(args.images), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{option}: failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})", file=sys.stderr)
                continue
            results[option] = json.loads(line[len("RESULT "):])
            reference = reference_of(option)
            if reference in results:
                results[option].update(agreement(work, Path(tmp) / reference, images))
            print(f"{option}: {results[option]['end_to_end_mpx_s']:.4f} Mpx/s end to end", file=sys.stderr, flush=True)
    peak = cpu_peak_gflops(args.threads)
    base = results.get(BASELINE)
    print(f"{len(images)} images, {results[BASELINE]['megapixels']:.2f} Mpx, {peak['threads']} threads on {peak['cpu']} "
          f"({peak['clock_ghz']:.2f} GHz; peak {peak['peak_gflop_s']:.0f} GFLOP/s = {peak['threads']} cores x "
          f"{peak['clock_ghz']:.2f} GHz x {peak['fp32_flops_per_cycle']} FP32 FLOPs/cycle; bf16 in hardware: {peak['bf16_hardware']}"
          f"{', at twice that rate' if peak['bf16_fast'] else ', at the FP32 rate or less' if peak['bf16_hardware'] else ''})")
    print("| option | runs as | end-to-end Mpx/s | x BasicUNet | network Mpx/s | x BasicUNet | GFLOP/s | % of peak | peak RSS MB | nuclei | Dice vs fp32 | AJI - fp32 | Dice | AJI |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for option, r in results.items():
        e2e = f"{r['end_to_end_mpx_s'] / base['end_to_end_mpx_s']:.2f}" if base else "-"
        net = f"{r['network_mpx_s'] / base['network_mpx_s']:.2f}" if base else "-"
        dice = f"{r['dice_vs_fp32']:.4f}" if "dice_vs_fp32" in r else "-"
        aji = f"{r['aji']:.4f}" if "aji" in r else "-"
        truth = f"{r['dice']:.4f}" if "dice" in r else "-"
        daji = f"{r['aji_minus_fp32']:+.4f}" if "aji_minus_fp32" in r else "-"
        runs_as = f"{r['runtime']} {'bf16' if r['bf16'] else 'fp32'}"
        print(f"| {option} | {runs_as} | {r['end_to_end_mpx_s']:.4f} | {e2e} | {r['network_mpx_s']:.4f} | {net} | {r['gflop_s']:.1f} "
              f"| {100 * r['gflop_s'] / peak['peak_gflop_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['nuclei']} | {dice} | {daji} | {truth} | {aji} |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"cpu": peak, "images": images, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
