"""Images on the wrong scale are refused where they enter (eager `disguise`, `wrap`), with the fix in the message."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

import tfdisguise
from tfdisguise.pixels import PixelRangeError


@pytest.fixture(scope="module")
def key():
    return make_key(image_shape=(8, 8, 1), block_size=4, noise=10)


def test_disguise_accepts_the_0_255_scale(key):
    rng = np.random.default_rng(0)
    for images in (rng.integers(0, 256, (3, 8, 8, 1)).astype(np.uint8),
                   rng.integers(0, 256, (3, 8, 8, 1)).astype(np.float32),
                   rng.uniform(0, 255, (3, 8, 8, 1)),          # fractions are fine above 1
                   np.zeros((3, 8, 8, 1), np.float32),           # all dark
                   rng.integers(0, 256, (3, 8, 8, 1))):          # int64
        assert tfdisguise.disguise(images, key).shape == (3, 8, 8, 1)
    assert tfdisguise.disguise(tf.constant(images, tf.float32), key).shape == (3, 8, 8, 1)


@pytest.mark.parametrize("bad, message", [
    (lambda x: x / 255.0, r"`images` at index 0, 1, 2 look scaled to 0\.\.1 .* \(images \* 255\)"),
    (lambda x: x - 128.0, r"`images` at index .* have values from -12\d to 12\d, outside 0\.\.255"),
    (lambda x: np.where(np.arange(3)[:, None, None, None] == 1, np.nan, x),
     r"`images` at index 1 hold NaN or infinite values"),
    (lambda x: x.astype(np.complex64), r"must be uint8, or float in 0\.\.255. Received: dtype=complex64"),
])
def test_disguise_refuses_images_off_the_scale(key, bad, message):
    x = bad(np.random.default_rng(1).integers(1, 256, (3, 8, 8, 1)).astype(np.float64))
    with pytest.raises(PixelRangeError, match=message):
        tfdisguise.disguise(x, key)
    with pytest.raises(ValueError):  # PixelRangeError is a ValueError, as for every bad argument
        tfdisguise.disguise(x, key)


def test_wrap_refuses_a_0_1_batch_and_names_the_fix(key):
    x = np.random.default_rng(2).uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(8, np.int64))).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"look scaled to 0\.\.1 .* \(images \* 255\)"):
        list(tfdisguise.wrap(ds, key))
    out = list(tfdisguise.wrap(ds, key, check_pixels=False))  # the owner may opt out, knowingly
    assert len(out) == 2


def test_wrap_refuses_out_of_range_before_augmentation(key):
    x = np.full((4, 8, 8, 1), 300.0, np.float32)
    seen = []

    def augment(images):
        seen.append(images)
        return images

    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside 0\.\.255"):
        list(tfdisguise.wrap(ds, key, augment=augment))
    good = tf.data.Dataset.from_tensor_slices(x / 2).batch(4)
    assert next(iter(tfdisguise.wrap(good, key, augment=augment))).shape == (4, 8, 8, 1)
    assert seen, "the augmentation ran on the checked batch"


def test_the_layer_refuses_a_0_1_batch_on_tensorflow(key, tmp_path):
    import keras

    layer = tfdisguise.Disguise(key)
    x = np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    with pytest.raises(PixelRangeError, match=r"look scaled to 0\.\.1"):  # concrete images: the plain error
        layer(x)
    model = keras.Sequential([keras.Input((8, 8, 1)), layer])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"look scaled to 0\.\.1"):
        model.predict(x, verbose=0)  # in a compiled function too
    assert model.predict(x * 255, verbose=0).shape == (2, 8, 8, 1)
    assert tfdisguise.Disguise(key, check_pixels=False)(x).shape == (2, 8, 8, 1)
    model.save(tmp_path / "owner.keras")  # the option travels in the config
    assert keras.saving.load_model(tmp_path / "owner.keras").layers[0].check_pixels is True
