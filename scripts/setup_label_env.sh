#!/usr/bin/env bash
# Create (or complete) .venv-label/: the MONAI Label 0.8.5 server environment for this bundle.
#
# Kept apart from .venv/ because MONAI Label pins numpy<2 and pydicom<3. Idempotent: re-running only
# installs what is missing. Usage:
#
#   scripts/setup_label_env.sh                      # CPU (default): torch 2.13.0+cpu
#   LABEL_TORCH=cuda scripts/setup_label_env.sh     # GPU machine: CUDA torch/torchvision from PyPI
#
# Steps:
#   1. torch==2.13.0 and torchvision==0.28.0. CPU: from the PyTorch CPU index
#      (https://download.pytorch.org/whl/cpu, override with TORCH_CPU_INDEX) when it answers, else from the
#      configured indexes (pip's find-links may hold the torch +cpu wheel). PyPI's torchvision is built against
#      CUDA torch: with the CPU torch wheel its `_C` ops do not load and `import torchvision` stops at
#      "operator torchvision::nms does not exist". MONAI Label imports torchvision.utils (pure Python), so in
#      that case the two fake-kernel registrations of the missing ops are made conditional (step 4).
#   2. monailabel==0.8.5 with --no-deps: its metadata requires `sam2`, an sdist whose build pulls the CUDA
#      torch wheel; the server runs with `--conf sam2 false`.
#   3. requirements-label.txt: MONAI Label's other dependencies and the bundle's runtime.
#   4. Check: `import torchvision, monailabel, monai, bundle` in the new environment.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LABEL_VENV:-.venv-label}
PY=${PYTHON:-python3.11}
LABEL_TORCH=${LABEL_TORCH:-cpu}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
MONAILABEL_VERSION=0.8.5

command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "+ creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)

has() { "$VENV/bin/python" - "$1" "$2" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(0 if version(sys.argv[1]).split("+")[0] == sys.argv[2] else 1)
except PackageNotFoundError:
    sys.exit(1)
EOF
}

index_answers() {
    "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=10)" \
        "$1" >/dev/null 2>&1
}

# 1. torch + torchvision
if ! has torch "$TORCH_VERSION" || ! has torchvision "$TORCHVISION_VERSION"; then
    if [ "$LABEL_TORCH" = cpu ] && index_answers "$TORCH_CPU_INDEX"; then
        echo "+ torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION from $TORCH_CPU_INDEX"
        "${PIP[@]}" --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    else
        [ "$LABEL_TORCH" = cpu ] && echo "+ $TORCH_CPU_INDEX does not answer: torch/torchvision from the configured indexes"
        "${PIP[@]}" "torch==$TORCH_VERSION"
        "${PIP[@]}" --no-deps "torchvision==$TORCHVISION_VERSION"
    fi
fi

# 2. MONAI Label without its sam2 requirement
if ! has monailabel "$MONAILABEL_VERSION"; then
    echo "+ monailabel $MONAILABEL_VERSION (--no-deps)"
    "${PIP[@]}" --no-deps "monailabel==$MONAILABEL_VERSION"
fi

# 3. the rest
echo "+ requirements-label.txt"
"${PIP[@]}" -r requirements-label.txt

# 4. torchvision built for CUDA torch on CPU torch: make its missing-op registrations conditional
if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    echo "+ torchvision does not import with this torch (CUDA build on CPU torch): guarding its fake-op registrations"
    "$VENV/bin/python" - <<'EOF'
import importlib.util
import pathlib

package = importlib.util.find_spec("torchvision").submodule_search_locations[0]  # without importing it
spec = pathlib.Path(package) / "_meta_registrations.py"
text = spec.read_text()
marker = "# patched by scripts/setup_label_env.sh"
if marker not in text:
    helper = (
        f"\n\n{marker}: the C++ ops are absent when _C does not load (CUDA build on CPU torch)\n"
        "def _register_fake(name):\n"
        "    return torch.library.register_fake(name) if torchvision.extension._has_ops() else (lambda fn: fn)\n"
    )
    text = text.replace("import torchvision.extension  # noqa: F401\n",
                        "import torchvision.extension  # noqa: F401\n" + helper, 1)
    text = text.replace("@torch.library.register_fake(\"torchvision::", "@_register_fake(\"torchvision::")
    spec.write_text(text)
EOF
fi

OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'EOF'
import monai, monailabel, numpy, torch, torchvision
import monailabel.transform.post  # imports torchvision.utils
import bundle.networks, bundle.pipeline.split, bundle.pipeline.measure
print(f"ok: monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__} (C++ ops: {torchvision.extension._has_ops()}), numpy {numpy.__version__}")
EOF
