#!/usr/bin/env bash
# On the device machine: install the carried wheels (scripts/device/prepare.sh), then run
# scripts/benchmark_gpu.py for at most BUDGET seconds (default 420), writing results.jsonl and the log to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device/out}"
mkdir -p "$OUT"
python -m pip install -q --no-index --find-links runs/device/wheels monai pytorch-ignite scikit-image shapely tifffile \
    tqdm fire openslide-python openslide-bin 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
HF_HUB_OFFLINE=1 timeout "${BUDGET:-420}" python scripts/benchmark_gpu.py --output_dir "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
rm -rf "$OUT/outputs"  # per-nucleus files of the synthetic slide: large, not needed
