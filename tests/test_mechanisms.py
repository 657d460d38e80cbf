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
    with pytest.raises(ValueError, match="rank 3 .* or 4"):
        disguise(mnist_like[..., 0][0], key)
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
