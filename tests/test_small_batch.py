"""The numpy small-batch path gives the TensorFlow path's disguise (the client uses it for batches up to 64)."""

import numpy as np
import pytest
from helpers import make_key

from tfdisguise import disguise
from tfdisguise.mechanisms import apply
from tfdisguise.mechanisms.small_batch import apply_numpy, new_rng, supports
from tfdisguise.serving import client


@pytest.mark.parametrize("shape, kwargs", [
    ((28, 28, 1), dict(block_size=7, rmt_mode="matrix")),
    ((8, 8, 3), dict(block_size=4, rmt_mode="matrix")),
    ((8, 8, 3), dict(block_size=4, rmt_mode="vector", rmt="projection")),
    ((8, 8, 3), dict(block_size=2, rmt=None, scramble="per_position")),
    ((8, 8, 1), dict(block_size=None, rmt_mode="matrix", permute=False)),
])
def test_numpy_path_equals_the_tensorflow_path(shape, kwargs):
    key = make_key(image_shape=shape, **kwargs)
    assert supports(key.plan)
    x = np.random.default_rng(0).integers(0, 256, (5, *shape)).astype(np.uint8)
    np.testing.assert_allclose(apply_numpy(x, key.plan, None), np.asarray(apply(x, key.plan)), rtol=1e-5, atol=2e-3)


def test_numpy_noise_has_the_level_of_the_spec():
    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=40)
    x = np.zeros((4000, 8, 8, 1), np.uint8)
    exact = apply_numpy(x, make_key(image_shape=(8, 8, 1), block_size=4).plan, None)
    noise = apply_numpy(x, key.plan, new_rng()) - exact  # same secret: same transform, noise after it
    assert noise.min() >= -1e-3 and noise.max() <= 40 + 1e-3
    assert abs(noise.mean() - 20) < 0.5 and abs(noise.std() - 40 / np.sqrt(12)) < 0.5
    assert not np.array_equal(apply_numpy(x[:1], key.plan, new_rng()), apply_numpy(x[:1], key.plan, new_rng()))


def test_plans_with_other_ops_stay_on_tensorflow():
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt=None, aes=True)
    assert not supports(key.plan)
    assert not supports(make_key(image_shape=(8, 8, 1), block_size=4, negpos_hash=True).plan)
    with pytest.raises(ValueError, match="ops without a numpy form"):
        apply_numpy(np.zeros((1, 8, 8, 1), np.uint8), key.plan, None)


def test_the_client_switches_at_its_small_batch_size():
    key = make_key(image_shape=(8, 8, 1), block_size=4)
    c = client.DisguisedClient("127.0.0.1:1", "m", key)
    try:
        x = np.random.default_rng(1).integers(0, 256, (client.SMALL_BATCH + 1, 8, 8, 1)).astype(np.uint8)
        small, large = c._disguise(x[:client.SMALL_BATCH]), c._disguise(x)
        np.testing.assert_allclose(small, disguise(x[:client.SMALL_BATCH], key), atol=2e-3)
        np.testing.assert_allclose(large, disguise(x, key), atol=2e-3)
    finally:
        c.close()
