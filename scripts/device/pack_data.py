"""Pack the training data into the few MiB a device (GPU) run can carry, and unpack it there.

    python scripts/device/pack_data.py pack ../shared/data runs/device/data [--quality 90]
    python scripts/device/pack_data.py unpack runs/device/data /tmp/grunet_data      # on the device machine

A device call carries the working tree and the named paths, 64 MiB in all, and the tracked files (the shipped
weights above all) take 48 of them. The images of MoNuSeg (30 x 1000x1000) and TNBC (37 x 512x512) are 70 MB as
lossless PNG, so ``pack`` stores them as lossy WebP (quality 90 by default: 11 MB, a mean absolute error of
about 2.5 grey levels per channel) and the masks, the
manifests and the folder layout as they are. ``unpack`` writes them back as PNG in the layout of ``../shared/data``
(``monuseg/train/{images,masks}``, ``monuseg/manifest.csv``, ``tnbc/{images,masks}``), which
``configs/monuseg_tnbc.json`` reads with ``--data_root``. A model trained there has seen WebP-compressed images
(the TCGA slides were JPEG-compressed when scanned); evaluate it here, on the lossless originals.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

from PIL import Image

FOLDERS = ("monuseg/train", "tnbc")
COPIED = ("monuseg/manifest.csv", "tnbc/manifest.csv")


def pack(data_root: Path, output: Path, quality: int = 90) -> int:
    """Write WebP images, PNG masks and the manifests of ``data_root`` under ``output``; return the bytes written."""
    jobs = []
    for folder in FOLDERS:
        for image in sorted((data_root / folder / "images").glob("*.png")):
            jobs.append((image, output / folder / "images" / f"{image.stem}.webp"))
        for mask in sorted((data_root / folder / "masks").glob("*.png")):
            jobs.append((mask, output / folder / "masks" / mask.name))
    for name in COPIED:
        jobs.append((data_root / name, output / name))
    if not any(src.suffix == ".png" for src, _ in jobs):
        raise FileNotFoundError(f"{data_root}: no images under {', '.join(f + '/images' for f in FOLDERS)}")

    def run(job) -> int:
        src, dst = job
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.suffix == ".webp":
            with Image.open(src) as im:
                im.convert("RGB").save(dst, "WEBP", quality=quality, method=6)
        else:
            shutil.copyfile(src, dst)
        return dst.stat().st_size

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(run, jobs))


def unpack(packed: Path, data_root: Path) -> int:
    """Write the packed images back as PNG (and copy the rest) under ``data_root``; return the number of images."""
    files = [p for p in packed.rglob("*") if p.is_file()]
    if not any(p.suffix == ".webp" for p in files):
        raise FileNotFoundError(f"{packed}: no packed images (run `pack` first)")

    def run(src: Path) -> bool:
        rel = src.relative_to(packed)
        dst = data_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".webp":
            with Image.open(src) as im:
                im.convert("RGB").save(dst.with_suffix(".png"), compress_level=1)
            return True
        shutil.copyfile(src, dst)
        return False

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(run, files))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data_root", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--quality", type=int, default=90)
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("data_root", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            print(f"{args.output}: {pack(args.data_root, args.output, args.quality) / 2**20:.1f} MiB")
        else:
            print(f"{args.data_root}: {unpack(args.packed, args.data_root)} images")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
