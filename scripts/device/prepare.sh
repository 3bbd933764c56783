#!/usr/bin/env bash
# Prepare a device (GPU) run: download the wheels the device machine lacks (it has torch, no MONAI) into
# runs/device/wheels, for the device's Python version (default 3.11).
# The synthetic slide is built on the device from the repo's sample crops (zlib tiles: no imagecodecs needed). Then call the device tool with
#   command: scripts/device/run_gpu_benchmark.sh     carry: ["runs/device"]
#
#   scripts/device/prepare.sh [python_version]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV="${1:-3.11}"
mkdir -p runs/device/wheels
.venv/bin/pip download -q -d runs/device/wheels --only-binary=:all: --python-version "$PYV" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    monai==1.6.1 pytorch-ignite==0.4.11 scikit-image shapely tifffile tqdm fire pillow scipy \
    lazy_loader imageio networkx openslide-python==1.4.7 openslide-bin==4.0.1.2 --no-deps
du -sh runs/device/wheels  # about 60 MiB of the 64 MiB a device call carries
