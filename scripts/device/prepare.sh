#!/usr/bin/env bash
# Prepare a device (GPU) run here, into runs/device: the wheels the device machine lacks (its image has torch, numpy,
# scipy, scikit-image, tifffile, pillow, matplotlib; not MONAI, ignite or fire) for its python3, and
#   training   (run_gpu_training.sh, run_gpu_networks.sh): the training data of ../shared/data, packed
#              (scripts/device/pack_data.py, about 12 MiB);
#   benchmark  (run_gpu_benchmark.sh, run_cohort_benchmark.sh): shapely (GeoJSON) and OpenSlide (the synthetic
#              slides are read through it).
# Both do not fit at once: what travels (tracked files, 48 MiB of them the shipped weights, + untracked files git does
# not ignore + runs/device) must stay under the 64 MiB a device call carries, which this script checks. Then call
# the device tool with, for example,
#   command: scripts/device/run_gpu_training.sh     carry: ["runs/device"]
#
#   scripts/device/prepare.sh training|benchmark [python_version] [data_root]     (default 3.12; ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE="${1:-}"
PYV="${2:-3.12}"
DATA="${3:-../shared/data}"
case "$MODE" in training|benchmark) ;; *) echo "usage: $0 training|benchmark [python_version] [data_root]" >&2; exit 1;; esac
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
rm -rf runs/device/wheels runs/device/data
mkdir -p runs/device/wheels
EXTRA=()  # training needs neither shapely (GeoJSON) nor OpenSlide
[ "$MODE" = benchmark ] && EXTRA=(shapely==2.2.0 openslide-python==1.4.7 openslide-bin==4.0.1.2)
"$PY" -m pip download -q -d runs/device/wheels --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 monai==1.6.1 pytorch-ignite==0.4.11 fire==0.7.1 termcolor==3.3.0 "${EXTRA[@]}" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
[ "$MODE" = training ] && "$PY" scripts/device/pack_data.py pack "$DATA" runs/device/data
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s + 0}')
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
carried=$(du -sb runs/device | cut -f1)
total=$((tracked + untracked + carried))
awk -v t="$total" -v a="$tracked" -v u="$untracked" -v c="$carried" 'BEGIN {m = 1048576;
    printf "travels: %.1f MiB (tracked %.1f, untracked %.1f, runs/device %.1f) of 64 MiB\n", t / m, a / m, u / m, c / m}'
[ "$total" -lt $((64 * 1048576)) ] || { echo "error: over the 64 MiB a device call carries" >&2; exit 1; }
