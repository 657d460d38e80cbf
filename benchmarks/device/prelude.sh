# Sourced by the run_*.sh scripts here: the set-up every device call shares. Needs OUT (the device tool sets it);
# takes PY (default python3), SKIP_INSTALL (the wheels in .gpu/whl are already importable) and DATA (an unpacked
# .npz; default: unpack .gpu/d/cifar_d.npz), and leaves DATA set.
PY=${PY:-python3}
: "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
if [ -z "$SKIP_INSTALL" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PYTHONPATH:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null; $PY -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())"
if [ -z "$DATA" ]; then
  DATA=/tmp/cifar.npz; $PY benchmarks/device/pack_cifar.py unpack .gpu/d/cifar_d.npz $DATA || exit 1
fi
