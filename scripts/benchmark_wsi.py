"""Whole-slide inference: throughput (Mpx/s) and peak memory on a real SVS and on a large synthetic slide.

    python scripts/benchmark_wsi.py --output_dir runs/wsi_benchmark            # 20,000 x 20,000 synthetic slide
    python scripts/benchmark_wsi.py --size 40000 --tissue_tiles 8

Three runs of ``scripts/segment_slides.py`` per model variant (``--variants full,compact``; one process each, so
that each peak RSS is its own): (1) the baseline, one 1000 x 1000 MoNuSeg image held in memory; (2) the slide given by ``--svs`` (by default
the OpenSlide sample ``CMU-1-Small-Region.svs`` from the development data beside the repo, skipped when absent);
(3) a pyramidal tiled TIFF of ``--size`` x ``--size`` pixels at 0.25 um/px assembled tile by tile from real MoNuSeg
images on white glass. Speed is reported as megapixels per second (level 0, and processed at the model's
resolution) and as a ratio to the baseline; memory as peak RSS, which should not grow with the slide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TILE = 512
GLASS = 243


def _placements(size: int, images: List[Path], count: int, seed: int = 0) -> List[Tuple[int, int, np.ndarray]]:
    """``count`` real images at random cells of a 2048-pixel grid, 12 pixels in (so each lies inside one
    1024-pixel inference tile): (x, y, rgb)."""
    rng = np.random.default_rng(seed)
    cells = [(x + 12, y + 12) for y in range(0, size - 1100, 2048) for x in range(0, size - 1100, 2048)]
    chosen = rng.choice(len(cells), size=min(count, len(cells)), replace=False)
    return [(cells[c][0], cells[c][1], np.asarray(Image.open(images[k % len(images)]).convert("RGB"))) for k, c in enumerate(chosen)]


def write_synthetic_slide(
    path: Path, size: int, images: List[Path], count: int, mpp: float = 0.25, compression: str = "jpeg"
) -> Dict[str, int]:
    """Pyramidal (downsamples 1, 4, 16, 64) tiled TIFF (JPEG tiles, or ``"zlib"`` where imagecodecs is missing),
    rendered tile by tile (memory ~ one tile)."""
    placed = _placements(size, images, count)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level, down in enumerate((1, 4, 16, 64)):
            side = size // down
            scaled = [(x // down, y // down, np.asarray(Image.fromarray(rgb).reduce(down)) if down > 1 else rgb) for x, y, rgb in placed]

            def tiles(side=side, scaled=scaled):
                for ty in range(0, side, TILE):
                    for tx in range(0, side, TILE):
                        tile = np.full((TILE, TILE, 3), GLASS, np.uint8)
                        for x, y, rgb in scaled:
                            h, w = rgb.shape[:2]
                            x0, y0, x1, y1 = max(x, tx), max(y, ty), min(x + w, tx + TILE), min(y + h, ty + TILE)
                            if x1 > x0 and y1 > y0:
                                tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = rgb[y0 - y : y1 - y, x0 - x : x1 - x]
                        yield tile

            res = 1e4 / (mpp * down)
            writer.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE), compression=compression,
                         compressionargs={"level": 90} if compression == "jpeg" else None, photometric="rgb", subfiletype=1 if level else 0,
                         resolution=(res, res), resolutionunit="CENTIMETER")
    return {"width": size, "height": size, "tissue_images": len(placed)}


def segment(path: Path, out: Path, extra: List[str]) -> Dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "segment_slides.py"), str(path), "-o", str(out), "--no_progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: segment_slides failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / path.stem / f"{path.stem}_summary.json").read_text())
    summary["process_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/wsi_benchmark")
    parser.add_argument("--size", type=int, default=20000, help="side of the synthetic slide in pixels")
    parser.add_argument("--tissue_tiles", type=int, default=6, help="real 1000 x 1000 images placed on it")
    parser.add_argument("--svs", default=str(SHARED / "wsi" / "CMU-1-Small-Region.svs"))
    parser.add_argument("--variants", default="full", help="comma list of model variants (full, compact)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = sorted((SHARED / "monuseg" / "train" / "images").glob("*.png")) or sorted((ROOT / "sample_data" / "monuseg" / "images").glob("*.png"))
    slide = out / f"synthetic_{args.size}.tif"
    t0 = time.perf_counter()
    info = write_synthetic_slide(slide, args.size, images, args.tissue_tiles)
    print(f"synthetic slide {slide}: {args.size} x {args.size}, {info['tissue_images']} real images, "
          f"{slide.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - t0:.0f} s")
    runs: Dict[str, Dict] = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        extra, tag = ["--variant", variant], f"{variant}: "
        runs[f"{tag}baseline (1000x1000 PNG)"] = segment(images[0], out / variant / "baseline", extra)
        if Path(args.svs).is_file():
            runs[f"{tag}CMU-1-Small-Region.svs"] = segment(Path(args.svs), out / variant / "svs", extra)
        runs[f"{tag}synthetic {args.size}x{args.size}"] = segment(slide, out / variant / "synthetic", extra)
    (out / "benchmark.json").write_text(json.dumps(runs, indent=2))
    print("| input | level-0 size | um/px | tiles run / all | nuclei | time s | level-0 Mpx/s | model Mpx/s | vs baseline | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in runs.items():
        base = runs[name.split(": ")[0] + ": baseline (1000x1000 PNG)"]["mpx_per_s_processed_model"]
        print(f"| {name} | {s['width']}x{s['height']} | {s['mpp']:.3f} | {s['tiles_processed']}/{s['tiles']} | {s['nucleus_count']} | "
              f"{s['seconds']:.1f} | {s['mpx_per_s_level0']:.3f} | {s['mpx_per_s_processed_model']:.3f} | "
              f"{s['mpx_per_s_processed_model'] / base:.2f}x | {s['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
