#!/usr/bin/env bash
# On the device machine (#14): train the full-size GRU-Net on MoNuSeg + TNBC (configs/monuseg_tnbc.json; MoNuSeg's
# training images drawn three times per epoch, the weaker cohort) for MINUTES of wall-clock time (default 6.5;
# --training_minutes sizes the epochs and the cosine schedule to fit), with bf16 autocast, channels_last, batches of
# 8 images x 16 crops and 14 loader workers. Data: runs/device/data (scripts/device/prepare.sh). Writes to $OUT the
# best weights packed in 15 MiB parts (scripts/research/pack_weights.py; unpack them here), history.jsonl,
# training_curve.png and the log. Evaluate the weights here, on the lossless images (docs/README.md).
#   command: scripts/device/run_gpu_training.sh [extra bundle overrides]     carry: ["runs/device"]
#   MINUTES=6.5 INIT=models/model.pt LR=0.001 scripts/device/run_gpu_training.sh     (INIT: fine-tune from weights)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/device/out}"
RUN="${RUN:-/tmp/grunet_train}"
DATA="${DATA:-/tmp/grunet_data}"
source scripts/device/install.sh
INIT_ARGS=()
[ -n "${INIT:-}" ] && INIT_ARGS=(--init_checkpoint "$INIT")
rm -rf "$RUN"  # a fresh run: never resumed from an earlier one on a warm machine
# the call's limit is 600 s: the outer timeout (CALL_BUDGET, 540 s) keeps time to pack what the run saved
HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 timeout "${CALL_BUDGET:-540}" python3 -m monai.bundle run training \
    --config_file "['configs/train.json','configs/monuseg_tnbc.json']" \
    --meta_file configs/metadata.json --logging_file configs/logging.conf \
    --data_root "$DATA" --output_dir "$RUN" --training_minutes "${MINUTES:-6.5}" --epochs 100000 \
    --val_interval "${VAL_INTERVAL:-20}" --images_per_batch "${IMAGES:-8}" --crops_per_image "${CROPS:-16}" \
    --num_workers "${WORKERS:-14}" --learning_rate "${LR:-0.001}" \
    --train#datalist "\$@datalists['train'] + 2 * list(filter(lambda d: d['dataset'] == 'monuseg', @datalists['train']))" \
    "${INIT_ARGS[@]}" "$@" 2>&1 | tr '\r' '\n' | grep -v "^\s*[0-9]*%\|it/s\]$\|s/it\]$" > "$OUT/train_log.txt"
tail -5 "$OUT/train_log.txt"
cp "$RUN/history.jsonl" "$OUT/history.jsonl"
python3 scripts/plot_history.py "$RUN/history.jsonl" "$OUT/training_curve.png" 2>&1 | tail -1
python3 scripts/research/pack_weights.py pack "$RUN/models/model.pt" "$OUT/model" --chunk-mb 15 && ls -la "$OUT"
