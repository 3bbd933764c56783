# On the device machine, sourced by the run scripts after they set OUT (and DATA): make OUT absolute, install the
# wheels carried in runs/device/wheels (scripts/device/prepare.sh) into /tmp/site beside the image's torch and put
# them on PYTHONPATH, record the GPU in $OUT/gpu.txt, and unpack the carried data (if any) into $DATA.
#   source scripts/device/install.sh
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    runs/device/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import monai, ignite, torch; print('device:', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
if [ -d runs/device/data ]; then
    python3 scripts/device/pack_data.py unpack runs/device/data "${DATA:-/tmp/grunet_data}" || exit 1
fi
