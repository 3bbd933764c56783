#!/usr/bin/env bash
# On the device machine (#15): the network comparison at one matched budget: each variant trained from scratch on
# MoNuSeg + TNBC (configs/monuseg_tnbc.json) for EPOCHS epochs of 50 images x 16 crops (default 40: 32,000
# patches), bf16, PARALLEL (2) variants at once on the GPU, each stopped at ROW_MINUTES (1.0) whatever its epoch
# (its budget is then smaller: ablations.json gives the epochs each row reached), then configs/evaluate.json on
# each (scripts/run_ablations.py). Data: runs/device/data (scripts/device/prepare.sh training). Writes to $OUT
# ablations.json (the table's figures), histories.tar.gz (each variant's history.jsonl: the curves) and the log.
#   command: scripts/device/run_gpu_networks.sh     carry: ["runs/device"]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device/out}"
RUN="${RUN:-/tmp/grunet_networks}"
DATA="${DATA:-/tmp/grunet_data}"
VARIANTS="${VARIANTS:-basicunet,compact,full,da_refinenet,unet_sharp,eunet3plus,eunet3plus_fusion,plain,respath,no_gdam,glorot_gdam}"
source scripts/device/install.sh
rm -rf "$RUN"  # fresh rows: never resumed from an earlier call on a warm machine
ARGS=(--configs configs/monuseg_tnbc.json --output_dir "$RUN" --variants "$VARIANTS" --epochs "${EPOCHS:-40}"
    --val_interval "${VAL_INTERVAL:-10}" --override data_root="$DATA" --override images_per_batch="${IMAGES:-8}"
    --override crops_per_image="${CROPS:-16}" --override num_workers="${WORKERS:-7}"
    --override learning_rate="${LR:-0.001}" --override training_minutes="${ROW_MINUTES:-1.0}" "$@")
# the whole run stops at BUDGET seconds (default 510); each row is evaluated as soon as it is trained, so the table
# then holds the rows evaluated by then
HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 timeout "${BUDGET:-510}" python3 scripts/run_ablations.py "${ARGS[@]}" \
    --parallel "${PARALLEL:-2}" 2>&1 | tee "$OUT/log.txt"
python3 scripts/run_ablations.py "${ARGS[@]}" --report_only 2>&1 | tail -14 | tee -a "$OUT/log.txt"
cp "$RUN/ablations.json" "$OUT/" 2>/dev/null
(cd "$RUN" && tar czf "$OUT/histories.tar.gz" */history.jsonl */train.log 2>/dev/null)
ls -la "$OUT"
