#!/usr/bin/env bash
# Export models/model.ts (TorchScript with configs/metadata.json and configs/inference.json embedded) from the
# trained checkpoint models/model.pt with MONAI's ckpt_export: the model the Deploy application loads.
#
#   scripts/export_model_ts.sh [python]     # python: default .venv/bin/python (the bundle's environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m monai.bundle ckpt_export network_def \
    --filepath models/model.ts \
    --ckpt_file models/model.pt \
    --meta_file configs/metadata.json \
    --config_file configs/inference.json \
    --bundle_root .
