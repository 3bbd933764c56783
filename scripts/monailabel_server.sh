#!/usr/bin/env bash
# Start a MONAI Label server for this bundle on a folder of images, offline, on 127.0.0.1.
#
#   scripts/monailabel_server.sh <studies dir> [port]          (port 8000 by default)
#
# Copies the app (monailabel/app) to $GRUNET_LABEL_APP (default runs/monailabel/app), links the bundle
# ($GRUNET_BUNDLE, default this repository) as model/pathology_nuclei_segmentation_grunet and execs
# `monailabel start_server` from .venv-label (scripts/setup_label_env.sh) with the offline options:
# local bundle only, `zoo_source github` (no zoo look-up), `sam2 false` (no weight download),
# HF_HUB_OFFLINE=1. Training writes models/model.pt inside $GRUNET_BUNDLE: point it at a copy to keep
# the repository's weights untouched. Extra `monailabel start_server` arguments: $GRUNET_LABEL_ARGS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=pathology_nuclei_segmentation_grunet

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 <studies dir> [port]" >&2
    exit 2
fi
STUDIES=$(cd "$1" 2>/dev/null && pwd) || { echo "error: studies folder not found: $1" >&2; exit 2; }
PORT=${2:-8000}
VENV=${GRUNET_LABEL_VENV:-$ROOT/.venv-label}
APP=${GRUNET_LABEL_APP:-$ROOT/runs/monailabel/app}
BUNDLE=$(cd "${GRUNET_BUNDLE:-$ROOT}" && pwd)

[ -x "$VENV/bin/monailabel" ] || { echo "error: $VENV/bin/monailabel missing: run scripts/setup_label_env.sh" >&2; exit 2; }
[ -f "$BUNDLE/configs/inference.json" ] || { echo "error: no bundle at $BUNDLE" >&2; exit 2; }

mkdir -p "$APP/model"
rm -rf "$APP/grunet_label" "$APP/main.py"
cp -r "$ROOT/monailabel/app/main.py" "$ROOT/monailabel/app/grunet_label" "$APP/"
ln -sfn "$BUNDLE" "$APP/model/$NAME"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MONAI_LABEL_DATASTORE_AUTO_RELOAD=${MONAI_LABEL_DATASTORE_AUTO_RELOAD:-true}
# the app imports the bundle package (bundle.pipeline.split, bundle.pipeline.measure)
export PYTHONPATH="$APP:$BUNDLE${PYTHONPATH:+:$PYTHONPATH}"
cd "$APP"
# .venv-label/bin/monailabel is a bash wrapper that runs whichever `python` is first on PATH and puts the
# venv's parent folder on PYTHONPATH: call the module with the venv's interpreter instead.
# shellcheck disable=SC2086
exec "$VENV/bin/python" -m monailabel.main start_server --app "$APP" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" \
    --conf models "$NAME" --conf zoo_source github --conf sam2 false ${GRUNET_LABEL_ARGS:-}
