#!/usr/bin/env bash
# On the device machine: install the carried wheels (scripts/device/prepare.sh), then measure cohort throughput
# (scripts/benchmark_cohort.py: synthetic pyramidal slides, one rank per GPU, bf16, 2048-pixel tiles whose windows
# run in batches of 64, 8 tile workers reading ahead and splitting behind) for at most BUDGET seconds (default 300).
#   command: scripts/device/run_cohort_benchmark.sh     carry: ["runs/device"]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device/out}"
source scripts/device/install.sh
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
HF_HUB_OFFLINE=1 timeout "${BUDGET:-300}" python3 scripts/benchmark_cohort.py --output_dir "$OUT/cohort" --device cuda \
    --nproc "1$( [ "$NGPU" -gt 1 ] && echo ",$NGPU" )" --threads 16 --variant full --sizes 24576,16384,16384,12288 \
    --tissue_tiles 64 --tile_size 2048 --sw_batch_size 64 --tile_workers 8 "$@" 2>&1 | tee "$OUT/cohort_log.txt"
cp "$OUT/cohort/results.jsonl" "$OUT/cohort_results.jsonl" 2>/dev/null
rm -rf "$OUT/cohort"  # slides and per-nucleus files: large, not needed
