#!/usr/bin/env bash
# TF Serving's own end-to-end suite against the embedded server (issue 23; docs/RESULTS.md, "TF Serving conformance").
#
#   bash benchmarks/tfserving_suite/run.sh SERVING_CHECKOUT [TEST ...]
#
# SERVING_CHECKOUT is a checkout of github.com/tensorflow/serving (the suite and its test models are read from it,
# never copied into this repository). The suite launches a binary named `tensorflow_model_server`; here that is
# `server.sh`, which execs `tfdisguise serve --embedded` with the same flags plus --allow_config_reload_rpc (off by
# default in tfdisguise, always on in TF Serving). The suite's two Keras tests were written for Keras 2 (tf.keras
# names a model's input `x`; Keras 3 names it `inputs`, which real TF Serving refuses too): with LEGACY_KERAS=1 the
# test process (only) imports tf-keras. Extra Python packages go to WORK/pydeps (pip --target), not to the venv.
# Needs network only for that pip install, once. Writes everything under WORK (default: a new temporary folder).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SERVING_CHECKOUT [TEST ...]" >&2; exit 2; }
checkout=$(cd "$1" && pwd); shift
[ -f "$checkout/tensorflow_serving/model_servers/tensorflow_model_server_test.py" ] \
  || { echo "$checkout is not a tensorflow/serving checkout (no tensorflow_serving/model_servers/tensorflow_model_server_test.py)" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
tfdisguise=${TFDISGUISE:-$repo/.venv/bin/tfdisguise}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/pydeps" "$work/tmp"

# Under bazel the suite finds its data and binary below $TEST_SRCDIR/tf_serving; lay that tree out with links.
top="$work/srcdir/tf_serving/tensorflow_serving"
mkdir -p "$top/model_servers"
ln -sfn "$checkout/tensorflow_serving/servables" "$top/servables"
for f in "$checkout"/tensorflow_serving/model_servers/*; do ln -sfn "$f" "$top/model_servers/$(basename "$f")"; done
ln -sfn "$here/server.sh" "$top/model_servers/tensorflow_model_server"

need=()
PYTHONPATH="$work/pydeps" "$py" -c "import portpicker" 2>/dev/null || need+=(portpicker)
if [ "${LEGACY_KERAS:-0}" = 1 ]; then
  PYTHONPATH="$work/pydeps" "$py" -c "import tf_keras" 2>/dev/null || need+=("tf-keras==2.21.*")
fi
[ ${#need[@]} -eq 0 ] || "$py" -m pip install --quiet --target "$work/pydeps" "${need[@]}"

export TEST_SRCDIR="$work/srcdir" TEST_TMPDIR="$work/tmp" PYTHONPATH="$work/pydeps" TF_CPP_MIN_LOG_LEVEL=2
export TFDISGUISE_SERVER="$tfdisguise" TFS_EXTRA_FLAGS="${TFS_EXTRA_FLAGS---allow_config_reload_rpc}"
export SUITE_ROOT="$top"
echo "suite: $checkout ($(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')); work: $work" >&2
cd "$work" && exec "$py" "$here/runner.py" "$@"
