#!/usr/bin/env bash
# Export a model variant's TorchScript file (configs/metadata.json, the variant's inference config and the text
# prior with the organ prompts embedded) from its trained checkpoint with MONAI's ckpt_export: the model the
# Deploy application loads.
#
#   scripts/export_model_ts.sh [variant] [python]   # variant: full (models/model.pt -> models/model.ts, default)
#                                                   #   or compact (models/model_compact.pt -> models/model_compact.ts)
#                                                   # python: default .venv/bin/python (the bundle's environment)
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT="${1:-full}"
PY="${2:-.venv/bin/python}"
case "$VARIANT" in
    full) NAME=model; CONFIGS="configs/inference.json" ;;
    compact) NAME=model_compact; CONFIGS="['configs/inference.json','configs/compact.json']" ;;
    *) echo "error: unknown model variant '$VARIANT'; known: full, compact" >&2; exit 1 ;;
esac
HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m monai.bundle ckpt_export network_def \
    --filepath "models/$NAME.ts" \
    --ckpt_file "models/$NAME.pt" \
    --meta_file configs/metadata.json \
    --config_file "$CONFIGS" \
    --bundle_root .
"$PY" -c "from bundle.networks.text_prior import embed_text_prior; embed_text_prior('models/$NAME.ts', 'models/text_prior.pt')"
