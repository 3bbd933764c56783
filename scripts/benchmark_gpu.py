"""GPU throughput in one short run: end-to-end slide Mpx/s and training patches/s, against BasicUNet.

    python scripts/benchmark_gpu.py --output_dir $OUT                      # on a CUDA machine, a few minutes
    python scripts/benchmark_gpu.py --output_dir /tmp/g --device cpu --size 4096 --tissue_tiles 2 --train_batch 2 --train_iters 1   # smoke test

1. A synthetic pyramidal slide of ``--size`` x ``--size`` pixels at 0.25 um/px, real MoNuSeg images on white glass
   (:func:`scripts.benchmark_wsi.write_synthetic_slide`), segmented end to end by the bundle's pipeline
   (``NucleusSegmenter.segment``: read -> tiles -> network -> instances -> files) per model variant, on the
   device with bf16 autocast, ``channels_last``, ``--tile_size`` tiles whose windows run in batches of
   ``--sw_batch_size``, and ``--tile_workers`` threads that read the next tiles and split the previous ones while
   the network runs. Reported: level-0 and processed (tissue) Mpx/s, seconds, peak RSS, nuclei.
2. Training patches/s (forward, loss, backward, AdamW; bf16 autocast, ``channels_last``, batch ``--train_batch``
   of 256x256) of the full and compact GRU-Net and BasicUNet (:func:`scripts.benchmark_training.measure`).

Every figure is appended to ``<output_dir>/results.jsonl`` as soon as it is measured (a run cut short keeps what
it measured) and the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import load_config  # noqa: E402
from scripts import benchmark_training  # noqa: E402
from scripts.benchmark_wsi import write_synthetic_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "compact")
TRAINING = ("full", "compact", "basicunet")


def record(output_dir: Path, row: Dict[str, Any]) -> None:
    """Append one result to ``results.jsonl`` and echo it."""
    with open(output_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def slide_throughput(slide: Path, output_dir: Path, variant: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Segment the slide with one variant; the summary's speed, memory and count."""
    overrides = {
        "device": f"$torch.device('{args.device}')", "runtime": "torch", "progress": False, "bf16": args.device != "cpu",
        "channels_last": True, "tile_size": args.tile_size, "sw_batch_size": args.sw_batch_size, "tile_workers": args.tile_workers,
    }
    segmenter = load_config("inference", overrides=overrides, variant=variant).get_parsed_content("segmenter")
    segmenter.segment(sorted(Path(args.images_dir).glob("*.png"))[0], output_dir / "warmup")  # first CUDA calls, autotuning
    t0 = time.perf_counter()
    summary = segmenter.segment(slide, output_dir / variant)
    seconds = time.perf_counter() - t0
    return {
        "kind": "slide", "variant": variant, "device": args.device, "seconds": round(seconds, 2),
        "mpx_level0": summary["megapixels_level0"], "mpx_s_level0": round(summary["megapixels_level0"] / seconds, 2),
        "mpx_processed": summary["megapixels_processed_model"], "mpx_s_processed": round(summary["megapixels_processed_model"] / seconds, 2),
        "nuclei": summary["nucleus_count"], "peak_rss_mb": summary["peak_rss_mb"],
        "tile_size": args.tile_size, "sw_batch_size": args.sw_batch_size, "tile_workers": args.tile_workers,
    }


def training_throughput(variant: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Training patches/s of one variant under bf16 autocast (CUDA) and channels_last."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = benchmark_training.variant_config(variant)
    net = config.get_parsed_content("network_def").to(device)
    bf16 = device.type == "cuda"
    pps = benchmark_training.measure(net, config.get_parsed_content("loss"), device, args.train_batch, 256, 2, args.train_iters,
                                     bf16, torch.bfloat16 if bf16 else None, channels_last=True)
    return {"kind": "training", "variant": variant, "device": args.device, "batch": args.train_batch, "bf16": bf16, "patches_s": round(pps, 1)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images_dir", default=str(ROOT / "sample_data" / "monuseg" / "images"), help="real images placed on the slide")
    parser.add_argument("--size", type=int, default=32768, help="slide side in pixels (level 0, 0.25 um/px)")
    parser.add_argument("--tissue_tiles", type=int, default=256, help="real images placed on the slide")
    parser.add_argument("--tile_size", type=int, default=2048)
    parser.add_argument("--sw_batch_size", type=int, default=64)
    parser.add_argument("--tile_workers", type=int, default=8)
    parser.add_argument("--train_batch", type=int, default=64)
    parser.add_argument("--train_iters", type=int, default=10)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    record(out, {"kind": "machine", "device": name, "torch": torch.__version__})
    results: List[Dict[str, Any]] = []
    for variant in TRAINING:
        results.append(training_throughput(variant, args))
        record(out, results[-1])
    slide = out / "synthetic_slide.tif"
    t0 = time.perf_counter()
    info = write_synthetic_slide(slide, args.size, sorted(Path(args.images_dir).glob("*.png")), args.tissue_tiles, compression="zlib")
    record(out, {"kind": "slide_written", **info, "seconds": round(time.perf_counter() - t0, 1)})
    for variant in VARIANTS:
        results.append(slide_throughput(slide, out / "outputs", variant, args))
        record(out, results[-1])
    slide.unlink()
    base = next(r["patches_s"] for r in results if r["kind"] == "training" and r["variant"] == "basicunet")
    print(f"\n{name}, torch {torch.__version__}\n| run | variant | figure | x BasicUNet |\n|---|---|---:|---:|")
    for r in results:
        if r["kind"] == "training":
            print(f"| training (batch {r['batch']}, 256x256) | {r['variant']} | {r['patches_s']} patches/s | {r['patches_s'] / base:.2f} |")
        else:
            print(f"| slide {r['mpx_level0']:.0f} Mpx ({r['mpx_processed']:.0f} Mpx tissue) | {r['variant']} | "
                  f"{r['mpx_s_level0']} Mpx/s level 0, {r['mpx_s_processed']} Mpx/s tissue, {r['seconds']} s | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
