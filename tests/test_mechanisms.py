import keras
import numpy as np
import pytest
from helpers import make_key

import tfdisguise
from tfdisguise import Spec, disguise, undisguise
from tfdisguise.mechanisms import BlockLinear, Op, Plan, apply, invert
from tfdisguise.mechanisms.reference import disguise_batch, split_blocks
from tfdisguise.spec import registered_steps


@pytest.mark.parametrize("shape,block", [((8, 8, 3), 2), ((14, 14, 1), 7), ((8, 8, 3), (4, 2))])
def test_permutation_is_exact_rearrangement_of_blocks(shape, block, rng):
    key = make_key(image_shape=shape, block_size=block, rmt=None, permute=True)
    x = rng.integers(0, 256, size=(4,) + shape, dtype=np.uint8)
    y = disguise(x, key)
    perm = key.materials[0]
    assert sorted(perm.tolist()) == list(range(key.spec.num_blocks))
    assert not np.array_equal(perm, np.arange(len(perm)))
    bh, bw = key.spec.block_size
    for xi, yi in zip(x, y):
        src, out = split_blocks(xi, bh, bw), split_blocks(yi, bh, bw)
        for j, p in enumerate(perm):
            np.testing.assert_array_equal(out[j], src[p].astype(np.float32))


@pytest.mark.parametrize("kind", ["orthogonal", "projection"])
@pytest.mark.parametrize("mode", ["matrix", "vector"])
@pytest.mark.parametrize("permute", [False, True])
def test_rmt_matches_per_image_reference(kind, mode, permute, cifar_like):
    key = make_key(image_shape=(8, 8, 3), block_size=(4, 2), rmt=kind, rmt_mode=mode, permute=permute)
    got = disguise(cifar_like, key)
    want = disguise_batch(cifar_like, key.spec, key.materials)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_permutation_before_rmt_matches_reference(mnist_like):
    spec = Spec((14, 14, 1), 7, steps=(tfdisguise.Permute(), tfdisguise.RMT("projection", "vector")))
    key = tfdisguise.Key(np.random.default_rng(5).bytes(32), spec)
    np.testing.assert_allclose(disguise(mnist_like, key), disguise_batch(mnist_like, spec, key.materials), atol=1e-3)


def test_whole_image_rmt_is_one_block(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=None, rmt="orthogonal", rmt_mode="vector", permute=False)
    assert key.spec.num_blocks == 1 and key.materials[0].shape == (1, 196, 196)
    want = disguise_batch(mnist_like, key.spec, key.materials)
    np.testing.assert_allclose(disguise(mnist_like, key), want, atol=1e-3)


@pytest.mark.parametrize("mode", ["matrix", "vector"])
def test_orthogonal_rmt_preserves_block_norms(mode, cifar_like):
    key = make_key(image_shape=(8, 8, 3), block_size=2, rmt="orthogonal", rmt_mode=mode, permute=False)
    y = disguise(cifar_like, key)
    for xi, yi in zip(cifar_like, y):
        for bx, by in zip(split_blocks(xi.astype(np.float64), 2, 2), split_blocks(yi, 2, 2)):
            assert np.linalg.norm(by) == pytest.approx(np.linalg.norm(bx), rel=1e-5, abs=1e-3)


@pytest.mark.parametrize("mode", ["matrix", "vector"])
@pytest.mark.parametrize("block", [2, 4, None])
def test_undisguise_inverts_orthogonal_pipelines(mode, block, cifar_like):
    key = make_key(image_shape=(8, 8, 3), block_size=block, rmt="orthogonal", rmt_mode=mode)
    back = undisguise(disguise(cifar_like, key), key)
    # 1e-4 of the 0..255 range.
    np.testing.assert_allclose(back / 255.0, cifar_like / 255.0, atol=1e-4)


@pytest.mark.parametrize("mode", ["matrix", "vector"])
def test_undisguise_inverts_projection_pipelines(mode, cifar_like):
    key = make_key(seed=3, image_shape=(8, 8, 3), block_size=4, rmt="projection", rmt_mode=mode)
    back = undisguise(disguise(cifar_like, key), key)
    # Gaussian matrices can be poorly conditioned: the float32 forward error is
    # amplified by their condition number, so the bound scales with it.
    cond = max(np.linalg.cond(m) for m in key.materials[0])
    np.testing.assert_allclose(back / 255.0, cifar_like / 255.0, atol=1e-5 * cond)


def test_noise_is_in_range_and_fresh(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt=None, permute=False, noise=25)
    a, b = disguise(mnist_like, key), disguise(mnist_like, key)
    for y in (a, b):
        delta = y - mnist_like.astype(np.float32)
        assert delta.min() >= 0 and delta.max() <= 25
        assert delta.max() > 20 and delta.min() < 5  # spread over the range, not a constant
    assert not np.allclose(a, b)


def test_noise_before_and_after_transforms(mnist_like):
    after = make_key(image_shape=(14, 14, 1), block_size=7, noise=50, noise_position="after")
    before = make_key(image_shape=(14, 14, 1), block_size=7, noise=50, noise_position="before")
    assert [s.name for s in after.spec.steps] == ["rmt", "permute", "noise"]
    assert [s.name for s in before.spec.steps] == ["noise", "rmt", "permute"]
    clean_after = disguise_batch(mnist_like, after.spec, after.materials[:2])
    delta = disguise(mnist_like, after) - clean_after
    assert delta.min() >= -1e-3 and delta.max() <= 50 + 1e-3
    # Noise before an orthogonal transform: undisguise gives x + noise - 25, zero-mean and bounded by +-25.
    est = undisguise(disguise(mnist_like, before), before)
    err = est - mnist_like
    assert abs(err.mean()) < 2 and np.abs(err).max() <= 25 + 1e-2


def test_undisguise_with_noise_is_least_squares_estimate(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", noise=20)
    est = undisguise(disguise(mnist_like, key), key)
    err = est - mnist_like
    assert abs(err.mean()) < 1.0  # the mean N/2 is removed
    assert 2 < err.std() < 10  # what remains is the zero-mean noise (std 20/sqrt(12) ~ 5.8)


def test_single_image_and_float_input(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7)
    batch = disguise(mnist_like, key)
    single = disguise(mnist_like[0].astype(np.float64), key)
    assert single.shape == (14, 14, 1) and single.dtype == np.float32
    np.testing.assert_allclose(single, batch[0], atol=1e-3)


def test_block_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`block_size` \(7, 7\) must divide the image shape \(32, 32, 3\)"):
        Spec.create((32, 32, 3), 7)


def test_wrong_rank_channels_and_size_are_clear_errors(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7)
    with pytest.raises(ValueError, match="rank 3 .* or 4"):  # (14, 14) would be one image without its channel axis
        disguise(mnist_like[0, 0], key)
    with pytest.raises(ValueError, match="3 channels but the key's spec expects 1"):
        disguise(np.zeros((2, 14, 14, 3), np.uint8), key)
    with pytest.raises(ValueError, match="must be 14x14"):
        disguise(np.zeros((2, 28, 28, 1), np.uint8), key)


def test_bad_step_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        tfdisguise.RMT(kind="rotation")
    with pytest.raises(ValueError, match="`level` must be a finite number"):
        tfdisguise.Noise(level=-1)
    with pytest.raises(ValueError, match="Unknown step 'instahide'"):
        Spec.from_dict({"image_shape": [8, 8, 1], "block_size": [4, 4], "steps": [{"name": "instahide"}]})


def test_apply_requires_noise_source_for_noisy_plans(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7, noise=10)
    with pytest.raises(ValueError, match="`uniform`"):
        apply(mnist_like, key.plan)


def _affine_numpy(blocks, op):
    """out[j] = in[perm[j]] @ M[j] + b[j], written directly on [t, N, d]."""
    x = blocks if op.perm is None else blocks[op.perm]
    if op.matrices is not None:
        x = np.einsum("tnd,tde->tne", x, op.matrices)
    return x if op.bias is None else x + op.bias[:, None, :]


def test_affine_block_ops_compose_and_invert_with_bias(rng):
    t, d = 4, 3
    a = BlockLinear(perm=rng.permutation(t), matrices=rng.normal(size=(t, d, d)), bias=rng.normal(size=(t, d)))
    b = BlockLinear(perm=rng.permutation(t), bias=rng.normal(size=(t, d)))
    c = BlockLinear(matrices=rng.normal(size=(t, d, d)))
    x = rng.normal(size=(t, 2, d))
    for first, second in [(a, b), (b, a), (a, c), (c, b), (b, b)]:
        fused = BlockLinear.compose(first, second)
        want = _affine_numpy(_affine_numpy(x, first), second)
        np.testing.assert_allclose(_affine_numpy(x, fused), want, atol=1e-9)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(x, dtype="float64")), want, atol=1e-9)
        np.testing.assert_allclose(_affine_numpy(want, fused.inverse()), x, atol=1e-9)


def test_negative_positive_fuses_with_rmt_and_permutation(cifar_like):
    key = make_key(image_shape=(8, 8, 3), block_size=4, rmt="orthogonal", rmt_mode="vector")
    d = key.spec.block_dim
    negpos = BlockLinear(matrices=-np.tile(np.eye(d), (4, 1, 1)), bias=np.full((4, d), 255.0))
    plan = Plan.compile(key.spec, [negpos, *key.plan.ops])
    assert len(plan.ops) == 1
    got = keras.ops.convert_to_numpy(apply(cifar_like, plan))
    np.testing.assert_allclose(got, disguise(255 - cifar_like, key), atol=1e-3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(invert(got, plan)), cifar_like, atol=1e-3)


def test_plan_checks_op_declarations_and_geometry():
    spec = Spec.create((8, 8, 1), 4)
    with pytest.raises(ValueError, match="`perm` covers 3 blocks but the spec has t = 4"):
        Plan.compile(spec, [BlockLinear(perm=np.arange(3))])
    with pytest.raises(ValueError, match="d = bh\\*bw\\*C = 16"):
        Plan.compile(spec, [BlockLinear(bias=np.zeros((4, 5)))])
    with pytest.raises(ValueError, match="`perm` must be a permutation"):
        BlockLinear(perm=np.array([0, 0, 1]))

    class Sideways(Op):
        layout = "columns"

    with pytest.raises(ValueError, match="`layout` as one of \\('image', 'blocks'\\). Received: layout='columns'"):
        Plan.compile(spec, [Sideways()])

    class NumpyLinear(BlockLinear):
        backend = "numpy"

    with pytest.raises(ValueError, match="declares `linear`, so it must be an affine block op"):
        Plan.compile(spec, [NumpyLinear()])
    with pytest.raises(TypeError, match="must build an op with __call__"):
        Plan.compile(spec, [None])

    class Bare:
        def __call__(self, x, uniform=None, dtype="float32"):
            return x

        def inverse(self):
            return self

    with pytest.raises(TypeError, match="Op Bare must declare \\['layout', 'backend', 'linear'"):
        Plan.compile(spec, [Bare()])
    with pytest.raises(NotImplementedError, match="Sideways declares no inverse"):
        Sideways().inverse()


def test_steps_live_with_their_ops_and_keep_their_public_names():
    from tfdisguise.mechanisms import noise, permute, rmt

    assert tfdisguise.RMT is tfdisguise.spec.RMT is rmt.RMT
    assert tfdisguise.Permute is permute.Permute and tfdisguise.Noise is noise.Noise
    assert {"noise", "permute", "rmt"} <= set(registered_steps())
    with pytest.raises(NotImplementedError, match="has no per-image numpy reference"):
        tfdisguise.spec.Step().reference(np.zeros((2, 2, 1)), None, None, None)


def test_op_repr_holds_no_key_material():
    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=10)
    text = " ".join(repr(op) for op in key.plan.ops)
    assert text == "BlockLinear(layout='blocks', backend='keras') AddNoise(level=10.0)"


# ---- matrix mode in row form, fusion, the captured-tensor hot path -------------------------


@pytest.mark.parametrize("kind", ["orthogonal", "projection"])
@pytest.mark.parametrize(
    "shape,block",
    [((16, 16, 3), 4), ((28, 28, 1), 7), ((32, 32, 3), 8), ((16, 16, 3), (4, 8)), ((24, 24, 2), (8, 3)),
     ((64, 64, 3), None)],
)
def test_matrix_mode_runs_bw_by_bw_matrices_and_matches_reference(shape, block, kind, rng):
    key = make_key(image_shape=shape, block_size=block, rmt=kind, rmt_mode="matrix", permute=True)
    (op,) = key.plan.ops
    bh, bw = key.spec.block_size
    # Never expanded: [t, bw, bw] in row form, not [t, d, d].
    assert op.rows == (bh, bw, shape[2]) and op.matrices.shape == (key.spec.num_blocks, bw, bw)
    assert op.matrices.dtype == np.float32
    x = rng.integers(0, 256, size=(3,) + shape, dtype=np.uint8)
    want = disguise_batch(x, key.spec, key.materials)
    np.testing.assert_allclose(disguise(x, key), want, rtol=1e-5, atol=2e-3)
    back = undisguise(disguise(x, key), key)
    tol = 1e-3 if kind == "orthogonal" else 1e-5 * max(np.linalg.cond(m) for m in key.materials[0]) * 255
    np.testing.assert_allclose(back, x, atol=tol)


def test_plan_holds_float32_and_builds_the_float64_inverse_once(cifar_like):
    key = make_key(image_shape=(8, 8, 3), block_size=4, rmt="projection", rmt_mode="vector", noise=10)
    linear = key.plan.ops[0]
    assert linear.matrices.dtype == np.float32
    np.testing.assert_array_equal(linear.matrices, key.materials[0][linear.perm].astype(np.float32))
    assert "inverse_ops" not in vars(key.plan)  # nothing float64 until the owner inverts
    undisguise(disguise(cifar_like, key), key)
    inverse = key.plan.inverse_ops
    assert inverse[-1].matrices.dtype == np.float64 and key.plan.inverse_ops is inverse


def test_plan_matrices_equal_the_float64_material_in_float32():
    for mode in ("matrix", "vector"):
        key = make_key(image_shape=(16, 8, 1), block_size=8, rmt="orthogonal", rmt_mode=mode, permute=False)
        fresh = make_key(image_shape=(16, 8, 1), block_size=8, rmt="orthogonal", rmt_mode=mode, permute=False)
        # One key derives the plan first (float32, lean path), the other the float64 material first.
        plan_first = fresh.plan.ops[0].matrices
        np.testing.assert_array_equal(plan_first, key.materials[0].astype(np.float32))
        np.testing.assert_array_equal(key.plan.ops[0].matrices, plan_first)


def test_parallel_derivation_is_bit_identical_to_sequential():
    from tfdisguise.mechanisms.rmt import random_matrices, random_matrix

    got = random_matrices(np.random.default_rng(3), 5, 80, "orthogonal")
    rng = np.random.default_rng(3)
    want = [random_matrix(rng, 80, "orthogonal") for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert float(rng.standard_normal()) == float(np.random.default_rng(3).standard_normal(5 * 80 * 80 + 1)[-1])
    f32 = random_matrices(np.random.default_rng(3), 5, 80, "orthogonal", dtype=np.float32)
    np.testing.assert_array_equal(f32, got.astype(np.float32))


def test_existing_key_derivation_is_unchanged():
    # Pinned from the key derivation before matrices were drawn in parallel; projection matrices and
    # permutations involve no LAPACK, so these bytes are the same on every machine.
    import hashlib

    key = make_key(seed=9, image_shape=(16, 16, 1), block_size=4, rmt="projection", rmt_mode="vector")
    digests = [hashlib.sha256(np.ascontiguousarray(m).tobytes()).hexdigest()[:16] for m in key.materials]
    assert digests == ["8ec5dd62f9475ea3", "09c247c8b40d17bb"]


def test_matrix_mode_and_permutation_fuse_into_one_row_form_op():
    key = make_key(image_shape=(8, 8, 3), block_size=4, rmt="orthogonal", rmt_mode="matrix", permute=True)
    linear = key.plan.linear
    perm, small = key.materials[1], key.materials[0]
    assert linear.rows == (4, 4, 3)
    np.testing.assert_array_equal(linear.perm, perm)
    np.testing.assert_array_equal(linear.matrices, small[perm].astype(np.float32))
    dense = linear.dense_matrices()
    assert dense.shape == (4, 48, 48)
    np.testing.assert_array_equal(dense, tfdisguise.mechanisms.expand_matrix_mode(linear.matrices, 4, 3))
    with pytest.raises(ValueError, match="needs 0.00 GB, over `max_bytes`"):
        linear.dense_matrices(max_bytes=100)


def _negpos(spec, flip):
    d = spec.block_dim
    sign = np.where(flip, -1.0, 1.0)[:, None] * np.ones(d)
    return BlockLinear(matrices=sign[:, :, None] * np.eye(d), bias=255.0 * (sign < 0))


@pytest.mark.parametrize("small", [True, False])
def test_matrix_mode_next_to_a_dense_op_fuses_only_while_small(small, cifar_like, monkeypatch):
    from tfdisguise.mechanisms import linear

    if not small:
        monkeypatch.setattr(linear, "DENSE_FUSE_BYTES", 0)
    key = make_key(image_shape=(8, 8, 3), block_size=4, rmt="orthogonal", rmt_mode="matrix", permute=True)
    negpos = _negpos(key.spec, np.array([True, False, True, False]))
    plan = Plan.compile(key.spec, [key.plan.ops[0], negpos])
    assert len(plan.ops) == (1 if small else 2)
    assert plan.ops[0].rows == (None if small else (4, 4, 3))
    got = keras.ops.convert_to_numpy(apply(cifar_like, plan))
    want = keras.ops.convert_to_numpy(apply(disguise(cifar_like, key), Plan.compile(key.spec, [negpos])))
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(invert(got, plan)), cifar_like, atol=1e-3)


def test_row_form_ops_compose_and_invert_with_bias(rng):
    t, rows = 4, (2, 3, 2)
    d = 12
    a = BlockLinear(perm=rng.permutation(t), matrices=rng.normal(size=(t, 3, 3)), bias=rng.normal(size=(t, d)),
                    rows=rows)
    b = BlockLinear(perm=rng.permutation(t), matrices=rng.normal(size=(t, 3, 3)), rows=rows)
    c = BlockLinear(matrices=rng.normal(size=(t, d, d)), bias=rng.normal(size=(t, d)))
    x = rng.normal(size=(t, 2, d))

    def dense(op):
        return BlockLinear(perm=op.perm, matrices=op.dense_matrices(), bias=op.bias)

    for first, second in [(a, b), (b, a), (a, c), (c, a)]:
        fused = BlockLinear.compose(first, second)
        want = _affine_numpy(_affine_numpy(x, dense(first)), dense(second))
        np.testing.assert_allclose(_affine_numpy(x, dense(fused)), want, atol=1e-9)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(x, dtype="float64")), want, atol=1e-9)
        np.testing.assert_allclose(_affine_numpy(want, dense(fused.inverse())), x, atol=1e-8)
    assert BlockLinear.compose(a, b).rows == rows and BlockLinear.compose(a, c).rows is None


def test_row_form_declarations_are_checked():
    with pytest.raises(ValueError, match=r"`rows` = \(2, 3, 1\), `matrices` must be \[t, bw, bw\] with bw = 3"):
        BlockLinear(matrices=np.zeros((2, 2, 2)), rows=(2, 3, 1))
    with pytest.raises(ValueError, match="`rows` must be None or"):
        BlockLinear(matrices=np.zeros((2, 2, 2)), rows=(2, 2))
    spec = Spec.create((8, 8, 1), 4)
    with pytest.raises(ValueError, match=r"`rows` must be the spec's \(bh, bw, C\) = \(4, 4, 1\)"):
        Plan.compile(spec, [BlockLinear(matrices=np.zeros((4, 2, 2)), rows=(8, 2, 1))])


def test_large_arrays_run_as_one_shared_tensor_everywhere(cifar_like, monkeypatch):
    # Above INLINE_BYTES the matrices go to the backend once, as a captured tensor sharing their
    # memory; a tiny threshold sends this small key down that path in every entry point.
    import tensorflow as tf

    from tfdisguise.mechanisms import constants

    monkeypatch.setattr(constants, "INLINE_BYTES", 0)
    key = make_key(image_shape=(8, 8, 3), block_size=4, rmt="projection", rmt_mode="vector", permute=True)
    want = disguise_batch(cifar_like, key.spec, key.materials)
    got = disguise(cifar_like, key)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    hot = key.plan.ops[0]._hot("matrices", "float32")
    assert isinstance(hot, tf.Tensor) and not key.plan.ops[0].matrices.flags.writeable
    wrapped = tfdisguise.wrap(tf.data.Dataset.from_tensor_slices(cifar_like).batch(4), key)  # XLA in tf.data
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in wrapped]), want, rtol=1e-5, atol=1e-3)
    model = keras.Sequential([keras.Input((8, 8, 3)), tfdisguise.Disguise(key)])
    np.testing.assert_allclose(model.predict(cifar_like, verbose=0), want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(undisguise(got, key), cifar_like, atol=1e-5 * np.linalg.cond(key.materials[0]).max())


def test_large_dense_matmuls_are_not_handed_to_xla(cifar_like):
    small = make_key(image_shape=(8, 8, 3), block_size=4, rmt_mode="vector")  # d = 48: XLA fuses the layout changes
    large = make_key(image_shape=(16, 16, 3), block_size=8, rmt_mode="vector")  # d = 192: TF's matmul is faster
    rows = make_key(image_shape=(16, 16, 3), block_size=8, rmt_mode="matrix")
    assert small.plan.ops[0].jit and not large.plan.ops[0].jit and rows.plan.ops[0].jit
    compiled = []

    def compile_fn(fn):
        compiled.append(fn)
        return fn

    for key, n in ((small, 1), (large, 0), (rows, 1)):
        compiled.clear()
        x = np.zeros((2,) + key.spec.image_shape, np.uint8)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(apply(x, key.plan, compile_fn=compile_fn)), 0)
        assert len(compiled) == n


def test_fusing_reorders_matrices_in_place_only_when_the_plan_owns_them(rng):
    m = rng.normal(size=(50, 3, 3))
    keep, perm = m.copy(), rng.permutation(50)
    fused = BlockLinear.compose(BlockLinear(matrices=m), BlockLinear(perm=perm))
    np.testing.assert_array_equal(m, keep)  # the caller's op is left alone
    np.testing.assert_array_equal(fused.matrices, keep[perm])
    owned = BlockLinear.compose(BlockLinear(matrices=m), BlockLinear(perm=perm), reuse_first=True)
    assert owned.matrices is m  # no second copy
    np.testing.assert_array_equal(m, keep[perm])
    # A key whose material was derived first keeps it intact when its plan is built.
    key = make_key(image_shape=(8, 8, 1), block_size=2, rmt_mode="vector", rmt="projection")
    material = key.materials[0].copy()
    np.testing.assert_array_equal(key.plan.ops[0].matrices, material[key.materials[1]].astype(np.float32))
    np.testing.assert_array_equal(key.materials[0], material)
