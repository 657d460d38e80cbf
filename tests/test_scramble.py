"""`block_scramble`: Kiya-style rotation, flip, negative-positive and channel shuffle per block, as an affine op."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import Disguise, Key, Spec, disguise, export_disguised, load_disguised, undisguise, wrap
from tfdisguise.mechanisms import BlockLinear
from tfdisguise.mechanisms.reference import disguise_batch
from tfdisguise.mechanisms.scramble import BlockScramble, scramble_block


def scramble_key(variant="per_position", shape=(8, 8, 3), block=2, seed=0, **kwargs):
    kwargs = {"rmt": None, "scramble": variant, **kwargs}
    return make_key(seed, image_shape=shape, block_size=block, **kwargs)


def test_each_transform_on_a_known_block():
    b = np.arange(8.0).reshape(2, 2, 2)  # two channels
    np.testing.assert_array_equal(scramble_block(b, [0, 0, 0, 0, 1]), b)
    np.testing.assert_array_equal(scramble_block(b, [2, 0, 0, 0, 1]), b[::-1, ::-1])
    np.testing.assert_array_equal(scramble_block(b, [0, 1, 0, 0, 1]), b[:, ::-1])
    np.testing.assert_array_equal(scramble_block(b, [0, 0, 1, 0, 1]), 255 - b)
    np.testing.assert_array_equal(scramble_block(b, [0, 0, 0, 1, 0]), b[:, :, ::-1])
    np.testing.assert_array_equal(scramble_block(b, [3, 0, 0, 0, 1]), np.rot90(b, -1))


@pytest.mark.parametrize("variant", ["shared", "per_position"])
def test_material_is_shared_or_per_position(variant):
    key = scramble_key(variant, shape=(16, 16, 3), block=4)
    m = key.materials[0]
    assert m.shape == (16, 6) and m.dtype == np.int32
    assert sorted(m[0, 3:].tolist()) == [0, 1, 2] and set(m[:, 0].tolist()) <= {0, 1, 2, 3}
    rows = {tuple(r) for r in m.tolist()}
    assert len(rows) == 1 if variant == "shared" else len(rows) > 4


def test_non_square_blocks_only_turn_by_half_turns():
    key = scramble_key(shape=(8, 16, 1), block=(2, 4))
    assert set(key.materials[0][:, 0].tolist()) <= {0, 2}


def test_switched_off_transforms_are_the_identity_and_the_rest_is_unchanged():
    spec = Spec((8, 8, 3), 2, steps=[BlockScramble(per_position=True, negpos=False, shuffle_channels=False)])
    key = Key(bytes(range(32)), spec)
    full = Key(bytes(range(32)), Spec((8, 8, 3), 2, steps=[BlockScramble(per_position=True)]))
    m, m_full = key.materials[0], full.materials[0]
    assert not m[:, 2].any() and (m[:, 3:] == [0, 1, 2]).all()
    np.testing.assert_array_equal(m[:, :2], m_full[:, :2])
    assert spec.describe() == "block 2x2: block_scramble(per-position; no negpos; no shuffle_channels)"
    assert key.plan.ops[0].bias is None  # no negative-positive: a pure permutation of pixels


@pytest.mark.parametrize("variant", ["shared", "per_position"])
@pytest.mark.parametrize("shape, block, rmt", [((8, 8, 3), 2, None), ((8, 8, 3), 4, "orthogonal"),
                                               ((8, 12, 3), (2, 4), None), ((14, 14, 1), 7, "projection")])
def test_matches_reference_fuses_and_inverts_exactly(rng, variant, shape, block, rmt):
    key = scramble_key(variant, shape, block, rmt=rmt, rmt_mode="vector")
    assert key.spec.is_linear and key.spec.has("block_scramble")
    assert len(key.plan.ops) == 1 and isinstance(key.plan.ops[0], BlockLinear)  # fused with RMT and permutation
    x = rng.integers(0, 256, (4, *shape), dtype=np.uint8)
    y = disguise(x, key)
    np.testing.assert_allclose(y, disguise_batch(x, key.spec, key.materials), atol=1e-3)
    if rmt is None:
        # Only pixel moves and 255 - x: the disguised image is still bytes, and the round trip is exact.
        assert np.array_equal(y, np.rint(y)) and y.min() >= 0 and y.max() <= 255
        assert not np.array_equal(y, x)
        np.testing.assert_array_equal(undisguise(y, key), x)
    else:
        np.testing.assert_allclose(undisguise(y, key), x, atol=1e-2)


def test_shared_scramble_without_permutation_treats_every_block_alike(rng):
    key = scramble_key("shared", (8, 8, 1), 4, permute=False)
    block = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
    x = np.tile(block, (1, 2, 2, 1))
    y = disguise(x, key)[0]
    for r in (0, 4):
        for c in (0, 4):
            np.testing.assert_array_equal(y[r:r + 4, c:c + 4], y[:4, :4])


def test_wrap_layer_and_shards_round_trip(rng, tmp_path):
    key = scramble_key("per_position", permute=True)
    x = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    want = disguise(x, key)
    wrapped = wrap(tf.data.Dataset.from_tensor_slices(x).batch(2), key)
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in wrapped]), want, atol=1e-3)
    model = keras.Sequential([keras.Input((8, 8, 3)), Disguise(key)])
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-3)
    out = str(tmp_path / "upload")
    export_disguised(tf.data.Dataset.from_tensor_slices((x, np.arange(5) % 2)), key, out, shard_size=3,
                     progress=False)
    shards, _ = next(iter(load_disguised(out, key=key).batch(5)))
    np.testing.assert_array_equal(undisguise(shards.numpy(), key), x)


def test_key_file_round_trip(rng, tmp_path):
    key = Key.generate(Spec.create((8, 8, 3), 2, rmt=None, scramble="per-position"))
    key.save(str(tmp_path / "key.json"))
    loaded = Key.load(str(tmp_path / "key.json"))
    with open(tmp_path / "key.json") as f:
        saved = json.load(f)
    assert saved["spec"]["steps"][0] == {"name": "block_scramble", "per_position": True, "rotate": True,
                                         "flip": True, "negpos": True, "shuffle_channels": True}
    x = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(undisguise(disguise(x, key), loaded), x)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"`scramble` must be one of \('none', 'shared', 'per_position'\)"):
        Spec.create((8, 8, 1), 4, scramble="everything")
    with pytest.raises(ValueError, match="`per_position` must be True or False. Received: per_position='yes'"):
        BlockScramble(per_position="yes")
    assert Spec.create((8, 8, 1), 4, scramble="none") == Spec.create((8, 8, 1), 4)


def test_scrambling_states_the_cost_of_its_dense_matrices():
    from tfdisguise.spec import PlanTooLargeError

    spec = Spec.create((28, 28, 1), 7, rmt=None, scramble="per_position", noise=100)
    cost = spec.cost()
    assert cost.matrix_bytes == 16 * 49 * 49 * 4 and cost.plan_bytes > cost.matrix_bytes
    with pytest.raises(PlanTooLargeError):
        Spec.create((448, 448, 3), 32, rmt=None, scramble="shared")  # 196 dense 3,072 x 3,072 matrices
