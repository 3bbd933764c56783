# On the device machine, sourced by the run scripts: install the wheels carried in runs/device/wheels
# (scripts/device/prepare.sh) into /tmp/site beside the image's torch, and put them on PYTHONPATH.
#   source scripts/device/install.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    runs/device/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import monai, ignite, fire, torch; print('device:', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())"
