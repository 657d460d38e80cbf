"""Large images: what a spec costs, refusal before allocation, bounded memory at 224x224x3."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_key

from tfdisguise import Key, Spec
from tfdisguise.spec import DEFAULT_MAX_PLAN_BYTES, RMT, Cost, PlanTooLargeError, Step


def _run(script: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cost_of_both_modes_at_224():
    matrix = Spec.create((224, 224, 3), 16, noise=25).cost()
    vector = Spec.create((224, 224, 3), 16, rmt_mode="vector", noise=25).cost()
    assert matrix.matrix_bytes == 196 * 16 * 16 * 4 and vector.matrix_bytes == 196 * 768 * 768 * 4
    pixels = 224 * 224 * 3
    assert matrix.flops_per_image == 2 * pixels * 16 + pixels  # 16x16 matmul per row and channel, noise add
    assert vector.flops_per_image == 2 * pixels * 768 + pixels
    assert vector.plan_bytes < DEFAULT_MAX_PLAN_BYTES < Spec.create((224, 224, 3), 32, rmt_mode="vector",
                                                                    max_plan_bytes=None).cost().plan_bytes
    assert Spec.create((8, 8, 1), 4).plain().cost() == Cost()
    assert Step().cost(None) == Cost()  # a step that says nothing costs nothing
    assert "MFLOP per image" in vector.summary() and vector.to_dict()["matrix_bytes"] == vector.matrix_bytes


def test_over_the_cap_is_refused_with_the_memory_needed_and_block_sizes_that_fit():
    with pytest.raises(PlanTooLargeError) as err:
        Spec.create((224, 224, 3), 32, rmt_mode="vector")
    text = str(err.value)
    assert "`block_size` (32, 32) on images (224, 224, 3)" in text
    assert "needs 3.93 GB for its plan (1.85 GB of float32 matrices" in text and "`max_plan_bytes` = 2.00 GB" in text
    assert "Block sizes that fit this image and these steps: 16, 14, 8, 7, 4, 2" in text
    assert "rmt_mode='matrix'" in text and "Received: block_size=(32, 32)" in text
    # The cap is the caller's: raised or lifted, the spec is made (nothing is allocated by a spec).
    assert Spec.create((224, 224, 3), 32, rmt_mode="vector", max_plan_bytes=4 * 10**9).block_size == (32, 32)
    assert Spec.create((224, 224, 3), rmt_mode="vector", max_plan_bytes=None).num_blocks == 1
    with pytest.raises(PlanTooLargeError, match="needs 0.41 MB .* over `max_plan_bytes` = 0.10 MB"):
        Spec.create((224, 224, 3), 16, max_plan_bytes=10**5)


REFUSE_BEFORE_ALLOCATING = r"""
import json, resource
import numpy as np
from tfdisguise import Key, Spec
from tfdisguise.spec import RMT, PlanTooLargeError

with open("/proc/self/statm") as f:
    mapped = int(f.read().split()[0]) * resource.getpagesize()
# TensorFlow is loaded and maps much address space; allow only 512 MiB more from here on.
resource.setrlimit(resource.RLIMIT_AS, (mapped + 512 * 2**20, resource.RLIM_INFINITY))
out = {}
try:
    np.ones(2**30, np.uint8)
    out["control"] = "allocated"
except MemoryError:
    out["control"] = "MemoryError"
for name, kwargs in [("whole_vector", {"rmt_mode": "vector"}),
                     ("block32_vector", {"block_size": 32, "rmt_mode": "vector"})]:
    try:
        Spec.create((224, 224, 3), **kwargs)
        out[name] = "created"
    except PlanTooLargeError as e:
        out[name] = str(e)
# A spec that did not come through Spec.create (a hand-made key file): the key refuses to derive it.
key = Key(bytes(range(32)), Spec((224, 224, 3), (224, 224), steps=[RMT("orthogonal", "vector")]))
for what in ("plan", "materials"):
    try:
        getattr(key, what)
        out[what] = "built"
    except PlanTooLargeError as e:
        out[what] = str(e)
print(json.dumps(out))
"""


def test_refusal_comes_before_any_large_allocation():
    out = _run(REFUSE_BEFORE_ALLOCATING)
    assert out["control"] == "MemoryError"  # the limit is real: 1 GiB cannot be had
    assert "needs 725.08 GB for its plan" in out["whole_vector"]
    assert "needs 3.93 GB" in out["block32_vector"]
    for what in ("plan", "materials"):
        assert "over this machine's memory" in out[what] and "Block sizes that fit" in out[what]


WHOLE_IMAGE_224 = r"""
import json, time
import numpy as np
import tensorflow as tf
import tfdisguise
from tfdisguise.mechanisms.reference import disguise_batch

t0 = time.perf_counter()
key = tfdisguise.Key.generate(tfdisguise.Spec.create((224, 224, 3), noise=25))  # keygen's default: whole image
(linear, noise) = key.plan.ops
seconds = time.perf_counter() - t0
x = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
y = tfdisguise.disguise(x, key)
wrapped = np.concatenate([b.numpy() for b in tfdisguise.wrap(tf.data.Dataset.from_tensor_slices(x).batch(4), key)])
clean = tfdisguise.Key(key.secret_bytes(), key.spec.without_noise())  # the same R and permutation
want = disguise_batch(x[:2], clean.spec, clean.materials)
print(json.dumps({
    "rows": list(linear.rows), "matrices": list(linear.matrices.shape), "plan_seconds": seconds,
    "err_clean": float(np.abs(tfdisguise.disguise(x[:2], clean) - want).max()),
    "noise": [float((y[:2] - want).min()), float((y[:2] - want).max())],
    "wrap_noise": [float((wrapped[:2] - want).min()), float((wrapped[:2] - want).max())],
    "undisguise_err": float(np.abs(tfdisguise.undisguise(tfdisguise.disguise(x, clean), clean) - x).max()),
    # VmHWM, not ru_maxrss: ru_maxrss survives fork + exec, so it would report the test runner's own peak.
    "peak_rss_bytes": next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                           if line.startswith("VmHWM:")),
}))
"""


def test_whole_image_matrix_mode_at_224_runs_in_bounded_memory():
    out = _run(WHOLE_IMAGE_224)
    assert out["rows"] == [224, 224, 3] and out["matrices"] == [1, 224, 224]  # R is W x W, never d x d
    assert out["plan_seconds"] < 10
    assert out["err_clean"] < 0.05
    for lo, hi in (out["noise"], out["wrap_noise"]):
        assert -0.05 < lo < 2 and 23 < hi < 25.05
    assert out["undisguise_err"] < 0.05
    assert out["peak_rss_bytes"] < 2 * 10**9, out["peak_rss_bytes"]  # TensorFlow itself is most of it


DERIVE = r"""
import hashlib, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import make_key

key = make_key(seed=11, image_shape=(16, 8, 1), block_size=8, rmt="orthogonal", rmt_mode="vector", permute=False)
fresh = make_key(seed=11, image_shape=(16, 8, 1), block_size=8, rmt="orthogonal", rmt_mode="vector", permute=False)
digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
print(json.dumps({"material": digest(key.materials[0]), "plan": digest(fresh.plan.ops[0].matrices)}))
"""


def test_parallel_key_derivation_is_identical_in_a_new_process():
    import hashlib
    import os

    # Two 64x64 matrices: the threaded path (see rmt.random_matrices) on any machine with two cores.
    key = make_key(seed=11, image_shape=(16, 8, 1), block_size=8, rmt="orthogonal", rmt_mode="vector", permute=False)
    out = _run(DERIVE, os.path.dirname(__file__))
    assert out["material"] == hashlib.sha256(key.materials[0].tobytes()).hexdigest()
    assert out["plan"] == hashlib.sha256(key.materials[0].astype(np.float32).tobytes()).hexdigest()


def test_key_material_for_a_capped_spec_is_still_derivable_when_small():
    # A key file written with a raised cap loads and works where the machine can hold it.
    spec = Spec((16, 16, 1), 16, steps=[RMT("orthogonal", "vector")])
    key = Key(bytes(32), spec)
    assert key.plan.ops[0].matrices.shape == (1, 256, 256)


def test_wrap_keeps_tf_data_from_copying_large_matrices(monkeypatch):
    """Over 16 MB of matrices, `wrap` turns tf.data's graph rewrites off (they copy captured tensors), and the
    disguise is unchanged; small plans keep the default optimizations."""
    import tensorflow as tf

    from tfdisguise import data, disguise, wrap

    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=0, rmt_mode="vector")
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensors(x)
    small = wrap(ds, key)
    assert small.options().experimental_optimization.apply_default_optimizations is not False
    monkeypatch.setattr(data, "INLINE_BYTES", key.spec.cost().matrix_bytes - 1)  # this plan now counts as large
    large = wrap(ds, key)
    assert large.options().experimental_optimization.apply_default_optimizations is False
    np.testing.assert_allclose(next(iter(large)).numpy(), disguise(x, key), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(next(iter(small)).numpy(), disguise(x, key), rtol=1e-5, atol=1e-3)
