"""Owner-side augmentation before the disguise (`wrap(augment=)`) and augmented copies in shards."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import disguise, export_disguised, load_disguised, read_manifest, undisguise, wrap


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector")


def flip(images):
    """A deterministic augmentation: left-right mirror."""
    return tf.reverse(tf.cast(images, tf.float32), axis=[2])


@pytest.mark.parametrize("batched", [True, False])
def test_augment_changes_the_plain_images_before_the_disguise(key, mnist_like, batched):
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6)))
    ds = ds.batch(4) if batched else ds
    out = wrap(ds, key, augment=flip)
    images = np.concatenate([x.numpy().reshape(-1, 14, 14, 1) for x, _ in out])
    labels = np.concatenate([np.reshape(y.numpy(), -1) for _, y in out])
    np.testing.assert_array_equal(labels, np.arange(6))
    np.testing.assert_allclose(images, disguise(mnist_like[:, :, ::-1], key), atol=1e-3)
    # Not the same as flipping the disguised images (which would break their blocks).
    assert not np.allclose(images, disguise(mnist_like, key)[:, :, ::-1], atol=1)
    np.testing.assert_allclose(undisguise(images, key), mnist_like[:, :, ::-1], atol=1e-3)


def test_augment_takes_keras_layers_with_fresh_draws_each_epoch(key, mnist_like):
    layer = keras.layers.RandomTranslation(0.3, 0.3, fill_mode="constant", seed=1)
    ds = wrap(tf.data.Dataset.from_tensor_slices(mnist_like).batch(6), key, augment=layer)
    first, second = (undisguise(next(iter(ds)).numpy(), key) for _ in range(2))
    assert not np.allclose(first, mnist_like, atol=1)
    assert not np.allclose(first, second, atol=1)
    # A translation keeps the pixel values, up to interpolation and the constant fill.
    assert first.max() <= 255 + 1e-3 and first.min() >= -1e-3


def test_augment_must_be_callable(key, mnist_like):
    with pytest.raises(TypeError, match="`augment` must be a Keras layer or a callable"):
        wrap(tf.data.Dataset.from_tensor_slices(mnist_like), key, augment="flip")


def test_copies_write_k_times_the_images_with_distinct_noise(mnist_like, tmp_path):
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", noise=50)
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6)))
    out = str(tmp_path / "upload")
    manifest = export_disguised(ds, key, out, shard_size=5, copies=3, progress=False)
    assert manifest["count"] == 18 and manifest["copies"] == 3 and manifest["augmented"] is False
    assert read_manifest(out)["labels"]["counts"] == {str(i): 3 for i in range(6)}
    images, labels = next(iter(load_disguised(out).batch(18)))
    images, labels = images.numpy(), labels.numpy()
    np.testing.assert_array_equal(labels, np.tile(np.arange(6), 3))
    passes = images.reshape(3, 6, 14, 14, 1)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(passes[a] - passes[b]).mean() > 5  # independent noise U[0, 50]
    # Each copy is the same image under noise: undisguised, it is the image plus zero-mean noise.
    recovered = undisguise(images, key).reshape(3, 6, 14, 14, 1).mean(axis=0)
    assert np.abs(recovered - mnist_like).mean() < 10


def test_copies_with_augment(key, mnist_like, tmp_path):
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6)))
    out = str(tmp_path / "upload")
    manifest = export_disguised(ds, key, out, copies=2, augment=flip, progress=False)
    assert manifest["count"] == 12 and manifest["augmented"] is True
    images = next(iter(load_disguised(out).batch(12)))[0].numpy()
    expected = disguise(np.concatenate([mnist_like, mnist_like])[:, :, ::-1], key)
    np.testing.assert_allclose(images, expected, atol=1e-3)
    with pytest.raises(ValueError, match="`copies` must be >= 1"):
        export_disguised(ds, key, str(tmp_path / "none"), copies=0, progress=False)
