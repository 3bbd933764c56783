"""Nuclei on tile borders: synthetic discs segmented in resampled tiles, counted once, twice or not at all.

    python scripts/research/tile_border_discs.py --side 3000 --mpp 0.2527 0.3 0.25

A ``side`` x ``side`` pink image holds dark discs of 8 model pixels radius on a jittered grid (30 model pixels
apart, seed 0); a stand-in network (nucleus where the image is dark) runs through :class:`NucleusSegmenter` in
tiles of 512 model pixels at each ``--mpp``. Printed per resolution: discs, nuclei found, discs found twice, discs
lost, tiles, the largest centroid error (px), the time and the process's peak memory so far (run one ``--mpp``
per process to compare memory). To compare with an earlier version, run this file in a git worktree of it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from skimage.draw import disk

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monai.inferers import SlidingWindowInferer  # noqa: E402
from bundle.pipeline.segmenter import NucleusSegmenter  # noqa: E402
from bundle.pipeline.split import InstanceSplitter  # noqa: E402


class DarkIsNucleus(torch.nn.Module):
    """Nucleus logit high where the image is dark: (B, 3, H, W) in [0, 1] -> (B, 1, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 30.0 * (0.45 - x[:, :3].mean(1, keepdim=True))


def count_discs(side: int, mpp: float, seed: int = 0) -> str:
    """One row of the table for discs drawn at ``mpp`` um/px."""
    rng = np.random.default_rng(seed)
    step, radius = round(30 * 0.25 / mpp), 8 * 0.25 / mpp
    image = np.empty((side, side, 3), np.uint8)
    image[:] = (230, 170, 200)
    grid = range(int(radius) + 4, side - int(radius) - 4, step)  # whole discs only
    centres = np.array([(cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2)) for cy in grid for cx in grid])
    for cx, cy in centres:
        image[disk((cy, cx), radius + 1e-6, shape=image.shape[:2])] = (70, 30, 110)
    segmenter = NucleusSegmenter(DarkIsNucleus(), SlidingWindowInferer((272, 272), 2, 0.1, mode="gaussian"), InstanceSplitter(min_size=10),
                                 patch_size=(272, 272), tile_size=512, margin=64, progress=False, tile_workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(image).save(Path(tmp) / "discs.png")
        start = time.perf_counter()
        summary = segmenter.segment(Path(tmp) / "discs.png", Path(tmp) / "out", mpp=mpp)
        seconds = time.perf_counter() - start
        with open(Path(tmp) / "out" / "discs" / "discs_nuclei.csv") as f:
            found = np.array([[float(r["centroid_x"]), float(r["centroid_y"])] for r in csv.DictReader(f)])
    distance, nearest = cKDTree(centres + 0.5).query(found)  # pixel centres
    twice, lost = len(nearest) - len(set(nearest)), len(centres) - len(set(nearest))
    return (f"{mpp:>6} | {len(centres):>6} | {len(found):>6} | {twice:>5} | {lost:>4} | {summary['tiles']:>5} | {distance.max():.2f} | "
            f"{seconds:.1f} | {summary['peak_rss_mb']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000, help="image side in pixels")
    parser.add_argument("--mpp", type=float, nargs="+", default=[0.2527, 0.3, 0.25], help="resolutions to read the image at")
    args = parser.parse_args()
    print(f"image {args.side} x {args.side}")
    print("   mpp |  discs |  found | twice | lost | tiles | max error px | seconds | peak RSS MB (process, so far)")
    for mpp in args.mpp:
        print(count_discs(args.side, mpp), flush=True)


if __name__ == "__main__":
    main()
