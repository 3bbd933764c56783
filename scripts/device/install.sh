#!/usr/bin/env bash
# On the device machine: install the wheels carried in runs/device/wheels (scripts/device/prepare.sh) beside its torch.
cd "$(dirname "$0")/../.."
python -m pip install -q --no-index --find-links runs/device/wheels monai pytorch-ignite scikit-image shapely tifffile \
    tqdm fire openslide-python openslide-bin 2>&1 | tail -3
