import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import disguise, wrap


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal")


@pytest.fixture
def noisy_key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", noise=40)


def test_images_only_unbatched(key, mnist_like):
    out = list(wrap(tf.data.Dataset.from_tensor_slices(mnist_like), key))
    assert len(out) == 6 and out[0].shape == (14, 14, 1) and out[0].dtype == tf.float32
    np.testing.assert_allclose(np.stack(out), disguise(mnist_like, key), atol=1e-4)


def test_pairs_batched_keep_labels_aligned(key, mnist_like):
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6))).batch(4)
    batches = list(wrap(ds, key))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(6))
    np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), disguise(mnist_like, key), atol=1e-4)


def test_dicts_keep_other_entries(key, mnist_like):
    ds = tf.data.Dataset.from_tensor_slices({"image": mnist_like, "label": np.arange(6), "id": np.arange(6) * 10})
    out = list(wrap(ds, key))
    assert set(out[0]) == {"image", "label", "id"}
    assert [int(e["id"]) for e in out] == [0, 10, 20, 30, 40, 50]
    np.testing.assert_allclose(np.stack([e["image"] for e in out]), disguise(mnist_like, key), atol=1e-4)


def test_fresh_noise_every_epoch(noisy_key, mnist_like):
    ds = wrap(tf.data.Dataset.from_tensor_slices(mnist_like).batch(6), noisy_key)
    first, second = next(iter(ds)).numpy(), next(iter(ds)).numpy()
    assert not np.allclose(first, second)
    clean = disguise(mnist_like, make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal"))
    assert (first - clean).min() >= -1e-3 and (first - clean).max() <= 40 + 1e-3


def test_model_fit_on_wrap_as_written(noisy_key, mnist_like):
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6) % 2)).batch(3)
    model = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(wrap(ds, noisy_key), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_wrong_image_shape_is_a_clear_error(key):
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match=r"have shape \(28, 28, 1\), but key \w+ was made for images of shape "
                                         r"\(14, 14, 1\)"):
        wrap(ds, key)


def test_unsupported_structure_is_a_clear_error(key):
    ds = tf.data.Dataset.from_tensor_slices({"pixels": np.zeros((2, 14, 14, 1), np.uint8)})
    with pytest.raises(ValueError, match="dicts with an 'image' entry"):
        wrap(ds, key)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        wrap(np.zeros((2, 14, 14, 1)), key)


def test_fresh_noise_every_epoch_even_under_a_global_seed(noisy_key, mnist_like):
    # Seeded training (keras.utils.set_random_seed) must not replay the same noise on every new iterator.
    keras.utils.set_random_seed(0)
    try:
        ds = wrap(tf.data.Dataset.from_tensor_slices(mnist_like).batch(6), noisy_key)
        first, second = next(iter(ds)).numpy(), next(iter(ds)).numpy()
        assert not np.allclose(first, second)
        keras.utils.set_random_seed(0)
        again = wrap(tf.data.Dataset.from_tensor_slices(mnist_like).batch(6), noisy_key)
        assert not np.allclose(next(iter(again)).numpy(), first)
    finally:
        tf.random.set_seed(None)
