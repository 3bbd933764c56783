#!/usr/bin/env bash
# On the device machine: install the carried wheels (scripts/device/prepare.sh), then run
# scripts/benchmark_gpu.py for at most BUDGET seconds (default 420), writing results.jsonl and the log to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device/out}"
source scripts/device/install.sh
HF_HUB_OFFLINE=1 timeout "${BUDGET:-420}" python3 scripts/benchmark_gpu.py --output_dir "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
rm -rf "$OUT/outputs"  # per-nucleus files of the synthetic slide: large, not needed
