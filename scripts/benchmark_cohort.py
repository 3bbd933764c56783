"""Cohort throughput: slides per hour and level-0 Mpx/s of ``torchrun`` cohort jobs, by number of ranks.

    python scripts/benchmark_cohort.py --output_dir runs/cohort_benchmark --nproc 1,2 --threads 2   # CPU
    python scripts/benchmark_cohort.py --output_dir $OUT --device cuda --nproc 1 --sizes 32768,32768,24576,16384 \\
        --tissue_tiles 96 --tile_size 2048 --sw_batch_size 64 --tile_workers 8                      # one GPU

Writes synthetic pyramidal slides of different sizes (real H&E images on white glass,
:func:`scripts.benchmark_wsi.write_synthetic_slide`; the number of images scales with the slide's area), then per
``--nproc`` value runs the bundle's cohort job on them, ``torchrun --standalone --nproc_per_node=N -m monai.bundle
run --config_file "['configs/inference.json','configs/cohort.json']"`` (``--threads`` CPU threads shared among the
ranks), into a fresh folder, and a second time into the same folder (every slide verified complete and kept: the
cost of a resume). Reported from ``cohort.json``: wall seconds, slides/h, level-0 Mpx/s, the busiest rank's share
of the work (1 / N is even) and its seconds, peak RSS per rank; ratios to the first ``--nproc`` value. Rows are
appended to ``<output_dir>/results.jsonl`` as they are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchmark_wsi import write_synthetic_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cohort_job(slides: Path, out: Path, nproc: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One cohort run; its report plus the launcher's wall time."""
    configs = ["configs/inference.json", "configs/cohort.json"] + (["configs/compact.json"] if args.variant == "compact" else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run",
           "--config_file", str(configs).replace(" ", ""), "--meta_file", "configs/metadata.json",
           "--input_path", str(slides), "--output_dir", str(out), "--progress", "False",
           "--tile_size", str(args.tile_size), "--sw_batch_size", str(args.sw_batch_size), "--tile_workers", str(args.tile_workers)]
    if args.device == "cpu":
        cmd += ["--device", "$torch.device('cpu')", "--runtime", args.runtime]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, args.threads // nproc))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    launcher = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cohort job with {nproc} rank(s) failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "cohort.json").read_text())
    report["launcher_seconds"] = round(launcher, 1)
    return report


def row_of(report: Dict[str, Any], nproc: int, run: str) -> Dict[str, Any]:
    work = [r["model_megapixels"] for r in report["ranks"]]
    busiest = max(report["ranks"], key=lambda r: r["seconds"])
    return {
        "kind": "cohort", "run": run, "nproc": nproc, "slides": report["slides"], "counts": report["counts"],
        "wall_seconds": report["wall_seconds"], "launcher_seconds": report["launcher_seconds"],
        "slides_per_hour": report["slides_per_hour"], "mpx_per_s_level0": report["mpx_per_s_level0"],
        "busiest_share": round(max(work) / sum(work), 3) if sum(work) else None, "busiest_seconds": busiest["seconds"],
        "rank_seconds": [r["seconds"] for r in report["ranks"]], "peak_rss_mb": [r["peak_rss_mb"] for r in report["ranks"]],
        "nucleus_count": report["nucleus_count"],
    }


def record(output_dir: Path, row: Dict[str, Any]) -> None:
    with open(output_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/cohort_benchmark")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one rank per GPU: --nproc up to the GPU count)")
    parser.add_argument("--nproc", default="1,2", help="comma list of ranks per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared among the ranks")
    parser.add_argument("--variant", default="compact", help="model variant: full or compact")
    parser.add_argument("--runtime", default="openvino", help="CPU runtime (torch, openvino, onnxruntime)")
    parser.add_argument("--sizes", default="8192,6144,6144,4096,4096", help="comma list of slide sides in pixels (0.25 um/px)")
    parser.add_argument("--tissue_tiles", type=int, default=4, help="real 1000x1000 images on the largest slide (fewer on smaller ones)")
    parser.add_argument("--images_dir", default=str(ROOT / "sample_data" / "monuseg" / "images"))
    parser.add_argument("--tile_size", type=int, default=1024)
    parser.add_argument("--sw_batch_size", type=int, default=2)
    parser.add_argument("--tile_workers", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    images = sorted(Path(args.images_dir).glob("*.png"))
    for i, size in enumerate(sizes):
        count = max(1, round(args.tissue_tiles * (size / max(sizes)) ** 2))
        path = slides / f"slide_{i:02d}_{size}.tif"
        if not path.is_file():
            write_synthetic_slide(path, size, images, count, compression="zlib")
    record(out, {"kind": "setup", "device": args.device, "threads": args.threads, "variant": args.variant, "sizes": sizes,
                 "tissue_tiles": args.tissue_tiles, "cpu_count": os.cpu_count()})
    rows = []
    for nproc in [int(n) for n in args.nproc.split(",")]:
        job = out / f"nproc{nproc}"
        subprocess.run(["rm", "-rf", str(job)], check=True)
        rows.append(row_of(cohort_job(slides, job, nproc, args), nproc, "fresh"))
        record(out, rows[-1])
        rows.append(row_of(cohort_job(slides, job, nproc, args), nproc, "rerun (all complete)"))
        record(out, rows[-1])
    base = rows[0]
    print(f"\n{len(sizes)} slides ({args.sizes}), {args.variant}, {args.device}, {args.threads} threads\n"
          "| ranks | run | wall s | slides/h | level-0 Mpx/s | x 1st | busiest rank's share | rank seconds | peak RSS MB per rank |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        speed = r["mpx_per_s_level0"] / base["mpx_per_s_level0"] if r["mpx_per_s_level0"] and r["run"] == "fresh" else None
        print(f"| {r['nproc']} | {r['run']} | {r['wall_seconds']} | {r['slides_per_hour']} | {r['mpx_per_s_level0']} | "
              f"{'' if speed is None else f'{speed:.2f}'} | {r['busiest_share']} | {r['rank_seconds']} | {r['peak_rss_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
