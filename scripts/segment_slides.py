"""Segment nuclei in whole slides and images: instance TIFF, QuPath GeoJSON, per-nucleus CSV, thumbnail, summary.

    python scripts/segment_slides.py <slide.svs> -o outputs/wsi
    python scripts/segment_slides.py <folder of slides or images> -o outputs/wsi --mpp 0.5

The same as ``python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_wsi.json']"
--input_path <path>``, with the errors printed as one line each. Exit status: 0 when every input was written,
1 when some were skipped (listed in ``report.json``), 2 when nothing could be done.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.config_io import load_config  # noqa: E402
from bundle.io.slides import SlideReadError  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a slide or image, or a folder of them")
    parser.add_argument("-o", "--output_dir", default="outputs/wsi")
    parser.add_argument("--mpp", type=float, default=None, help="microns per pixel of level 0; overrides the file's value")
    parser.add_argument("-m", "--model", default=None, help="checkpoint (default: models/model.pt)")
    parser.add_argument("--tile_size", type=int, default=None, help="tile side in model pixels (default 1024)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--tta", action="store_true", help="average the four flips of every tile (4x the time)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"input_path": args.input, "output_dir": args.output_dir, "mpp": args.mpp, "progress": not args.no_progress,
                 "tta": args.tta}
    if args.model:
        if not Path(args.model).is_file():
            print(f"error: {args.model}: no such model file", file=sys.stderr)
            return 2
        overrides["segmenter#checkpoint"] = str(Path(args.model).resolve())
    if args.tile_size:
        overrides["tile_size"] = args.tile_size
    if args.device:
        overrides["device"] = f"$torch.device('{args.device}')"
    config = load_config(["inference", "inference_wsi"], overrides=overrides)
    try:
        report = config.get_parsed_content("segmenter").run(args.input, args.output_dir, args.mpp)
    except SlideReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for item in report["skipped"]:
        print(f"skipped: {item['reason']}", file=sys.stderr)
    for s in report["written"]:
        print(f"{s['input']}: {s['nucleus_count']} nuclei, {s['nuclei_per_mm2_tissue']} per mm2 of tissue, {s['seconds']} s -> {Path(s['files']['geojson']).parent}")
    if not report["written"]:
        return 2
    return 1 if report["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
