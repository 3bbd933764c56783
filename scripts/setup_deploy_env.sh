#!/usr/bin/env bash
# Create (or update) .venv-deploy: the MONAI Deploy application's environment, CPU only. Idempotent.
#
#   scripts/setup_deploy_env.sh            # then: .venv-deploy/bin/python deploy/app.py -i <in> -o <out> -m models/model.ts
#
# Environment: PYTHON (default python3.11, else python3; 3.10-3.13 are supported by the SDK),
# TORCH_INDEX_URL (an extra index for the 2.13.0+cpu wheel: set it to https://download.pytorch.org/whl/cpu
# where pip does not already find that wheel, e.g. through find-links).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
VENV=.venv-deploy

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
# 1. the CPU build of torch first, so that nothing below resolves torch to the CUDA build
if [ -n "$TORCH_INDEX_URL" ]; then
    "${PIP[@]}" "torch==2.13.0" --extra-index-url "$TORCH_INDEX_URL"
else
    "${PIP[@]}" "torch==2.13.0"
fi
# 2. the SDK, holoscan, the CUDA 13 runtime library holoscan links, DICOM packages, and what bundle/ needs
"${PIP[@]}" -r requirements-deploy.txt
# 3. check: importing monai imports the SDK (monai.deploy) and holoscan
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'PY'
import sys
sys.path.insert(0, "deploy")
from cuda_runtime import preload_cuda_runtime

preload_cuda_runtime()
import holoscan
import monai
import monai.deploy
from monai.deploy.operators.monai_bundle_inference_operator import MonaiBundleInferenceOperator  # noqa: F401

print(f"{sys.argv[0] or 'setup'}: .venv-deploy ready: monai {monai.__version__}, monai-deploy-app-sdk "
      f"{monai.deploy.__version__}, holoscan {holoscan.__version__}")
PY
