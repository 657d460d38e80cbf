"""`negpos_hash`: each block inverted or not by a keyed hash of its content; exact, learnable, odd moments gone."""

import numpy as np
import tensorflow as tf
from helpers import make_key

from tfdisguise import Spec, disguise, undisguise, wrap
from tfdisguise.mechanisms.negpos_hash import HashedNegPos, NegPosHash
from tfdisguise.mechanisms.reference import disguise_batch


def strokes(rng, n=400):
    """MNIST-like images: dark background, bright anti-aliased strokes with grey edges."""
    x = np.zeros((n, 16, 16, 1), np.float64)
    for i in range(n):
        r, c = rng.integers(2, 10, 2)
        x[i, r:r + 6, c:c + 3] = 255
        x[i, r:r + 6, c + 3] = rng.integers(20, 200)
    return x.astype(np.uint8)


def test_matches_reference_and_is_its_own_exact_inverse(rng):
    key = make_key(image_shape=(12, 12, 3), block_size=4, rmt=None, permute=True, negpos_hash=True)
    assert [s.name for s in key.spec.steps] == ["negpos_hash", "permute"]
    assert not key.spec.is_linear and not key.plan.runs_numpy and key.plan.exact_inverse
    x = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    y = disguise(x, key)
    np.testing.assert_array_equal(y, disguise_batch(x, key.spec, key.materials))
    np.testing.assert_array_equal(undisguise(y, key), x)
    op = key.plan.ops[0]
    assert isinstance(op, HashedNegPos) and op.inverse() is op


def test_round_trip_through_rmt(rng):
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector", negpos_hash=True)
    x = rng.integers(0, 256, (4, 14, 14, 1), dtype=np.uint8)
    np.testing.assert_allclose(undisguise(disguise(x, key), key), x, atol=1e-2)


def test_the_sign_depends_on_the_content_and_the_key(rng):
    x = strokes(rng)
    spec_kwargs = dict(image_shape=(16, 16, 1), block_size=8, rmt=None, permute=False, negpos_hash=True)
    a, b = make_key(1, **spec_kwargs), make_key(2, **spec_kwargs)
    flips_a = (disguise(x, a) != x).reshape(-1, 2, 8, 2, 8).any(axis=(2, 4))
    flips_b = (disguise(x, b) != x).reshape(-1, 2, 8, 2, 8).any(axis=(2, 4))
    has_grey = ((x > 0) & (x < 255)).reshape(-1, 2, 8, 2, 8).any(axis=(2, 4))
    # Where a block holds grey levels, about half the images have it inverted, differently for another key.
    assert 0.3 < flips_a[has_grey].mean() < 0.7
    assert 0.3 < (flips_a != flips_b)[has_grey].mean() < 0.7
    # An empty block always hashes alike: it is always kept or always inverted at its position.
    empty = ~(x > 0).reshape(-1, 2, 8, 2, 8).any(axis=(2, 4))
    for j in np.ndindex(2, 2):
        seen = flips_a[:, j[0], j[1]][empty[:, j[0], j[1]]]
        assert seen.size == 0 or seen.all() or not seen.any()


def test_odd_moments_of_varying_blocks_vanish(rng):
    # What a sign-fixing eigenbasis attacker reads: the mean and third moment of the centred pixels.
    x = strokes(rng, 800)
    key = make_key(image_shape=(16, 16, 1), block_size=16, rmt=None, permute=False, negpos_hash=True)
    z_plain = x.reshape(len(x), -1).astype(np.float64) - 127.5
    z = disguise(x, key).reshape(len(x), -1).astype(np.float64) - 127.5
    assert np.abs(z_plain.mean(0)).mean() > 80
    assert np.abs(z.mean(0)).mean() < 20
    # The second moment is what the owner cannot hide: it is the same as the plain one.
    np.testing.assert_allclose((z ** 2).mean(0), (z_plain ** 2).mean(0))


def test_runs_in_tf_data(rng):
    key = make_key(image_shape=(8, 8, 1), block_size=4, negpos_hash=True)
    x = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    wrapped = wrap(tf.data.Dataset.from_tensor_slices(x).batch(5), key)
    np.testing.assert_allclose(next(iter(wrapped)).numpy(), disguise(x, key), atol=1e-3)


def test_spec_json_and_material():
    spec = Spec.create((8, 8, 1), 4, negpos_hash=True)
    assert spec.describe() == "block 4x4: negpos_hash > rmt(orthogonal,matrix) > permute"
    assert Spec.from_dict(spec.to_dict()) == spec and spec.has(NegPosHash)
    key = make_key(image_shape=(8, 8, 1), block_size=4, negpos_hash=True)
    table = key.materials[0]
    assert table.shape == (4, 16, 128) and set(np.unique(table).tolist()) == {0, 1}
