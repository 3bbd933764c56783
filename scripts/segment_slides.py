"""Segment nuclei in images and whole slides: instance TIFF, mask, QuPath GeoJSON, per-nucleus CSV, overlay, summary.

    python scripts/segment_slides.py <slide.svs> -o outputs/wsi
    python scripts/segment_slides.py <folder of slides or images> -o outputs/wsi --mpp 0.5
    torchrun --standalone --nproc_per_node=4 scripts/segment_slides.py <folder or cohort.csv> -o outputs/cohort --cohort


The same pipeline and settings as ``python -m monai.bundle run --config_file configs/inference.json
--input_path <path>`` (``segmenter`` in ``configs/inference.json``). Exit status (bundle.errors): 0 every input
written, 1 nothing processed (one line on stderr), 2 some inputs skipped (named in ``report.json``).

``--cohort``: the slides of a folder or CSV manifest (``path``, optional ``mpp`` and ``organ``) shared among the
ranks of a ``torchrun`` job (or one process), resumable: each slide's folder appears complete or not at all, a
rerun skips complete ones, and ``cohort.csv`` / ``cohort.json`` summarise the run (:mod:`bundle.cohort`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.cohort import CohortRunner  # noqa: E402
from bundle.config_io import load_config, parse_device  # noqa: E402
from bundle.errors import EXIT_ERROR, CommandLineParser, find_input_error  # noqa: E402
from bundle.io.slides import check_mpp  # noqa: E402

logger = logging.getLogger("segment_slides")
MAX_SW_OVERLAP = 0.9


def main(argv: Optional[List[str]] = None) -> int:
    parser = CommandLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a slide or image, or a folder of them (with --cohort also a CSV manifest)")
    parser.add_argument("-o", "--output_dir", default="outputs/wsi")
    parser.add_argument("--mpp", type=float, default=None, help="microns per pixel of level 0; overrides the file's value")
    parser.add_argument("--variant", default="auto", help="model variant: auto (compact on CPU, full with CUDA), full (models/model.pt) or compact (models/model_compact.pt)")
    parser.add_argument("-m", "--model", default=None, help="checkpoint (default: the variant's file in models/)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--organ", default=None, help="organ of the tissue, for the network's prompts (e.g. breast; default: unknown)")
    parser.add_argument("--organ_csv", default=None, help="CSV with id (or image) and organ columns: each input's organ")
    parser.add_argument("--tta", action="store_true", help="average the four flips of every tile (4x the time)")
    parser.add_argument("--sw_overlap", type=float, default=None,
                        help=f"overlap of the network's 272-pixel windows in [0, {MAX_SW_OVERLAP}] (default 0.1)")
    parser.add_argument("--all_windows", action="store_true",
                        help="compute every window of a tile, also those more than half a window from tissue (slower)")
    parser.add_argument("--cohort", action="store_true", help="cohort job: shared among torchrun's ranks, resumable, cohort.csv")
    parser.add_argument("--backend", default=None, help="with --cohort under torchrun: gloo or nccl (default: nccl with CUDA, else gloo)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not args.cohort:
        print("error: launched with several ranks (WORLD_SIZE > 1): pass --cohort so that they share the slides", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"progress": not args.no_progress, "tta": args.tta, "skip_background_windows": not args.all_windows}
    if args.sw_overlap is not None:
        if not 0.0 <= args.sw_overlap <= MAX_SW_OVERLAP:  # at 0.9 each pixel is computed 100 times
            print(f"error: --sw_overlap must be in [0, {MAX_SW_OVERLAP}], got {args.sw_overlap}", file=sys.stderr)
            return EXIT_ERROR
        overrides["sw_overlap"] = args.sw_overlap
    if args.model:
        overrides["checkpoint"] = str(Path(args.model).resolve())
    try:
        if args.device:
            overrides["device"] = parse_device(args.device)  # a torch.device, never text the config would evaluate
        mpp = check_mpp(args.mpp)
        segmenter = load_config("inference", overrides=overrides, variant=args.variant).get_parsed_content("segmenter")
        segmenter.organ = args.organ  # set on the object: the config would evaluate "$..." and resolve "@..."
        if args.cohort:
            return report_cohort(CohortRunner(segmenter, args.backend).run(args.input, args.output_dir, mpp, args.organ_csv))
        report = segmenter.run(args.input, args.output_dir, mpp, args.organ_csv)
    except Exception as e:  # the config parser wraps errors in RuntimeError: report the user's problem inside
        found = find_input_error(e)
        if found is None:
            raise
        logger.debug("traceback", exc_info=True)
        print(f"error: {found}", file=sys.stderr)
        return EXIT_ERROR
    for item in report.skipped:
        print(f"skipped: {item['reason']}", file=sys.stderr)
    for item in report.ignored:
        print(f"ignored: {item['input']}: {item['reason']}", file=sys.stderr)
    for s in report.written:
        density = s.get("message") or f"{s['nuclei_per_mm2_tissue']} per mm2 of tissue"  # "no tissue detected", ...
        print(f"{s['input']}: {s['nucleus_count']} nuclei, {density}, {s['seconds']} s -> {Path(s['files']['geojson']).parent}")
    return report.exit_status


def report_cohort(result) -> int:
    """Print a cohort run's failures and, on rank 0, its counts; the exit status."""
    for record in result.records:
        if record["status"] == "failed":
            print(f"failed: {record['reason']}", file=sys.stderr)
    if result.report is not None:
        r = result.report
        summary = r.get("summary_error") or Path(r["output_dir"]) / "cohort.csv"
        print(f"cohort: {r['counts']}, {r['nucleus_count']} nuclei, {r['wall_seconds']} s -> {summary}")
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
