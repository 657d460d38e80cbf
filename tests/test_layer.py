import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import Disguise, disguise


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector")


def test_layer_matches_functional_disguise(key, mnist_like):
    got = keras.ops.convert_to_numpy(Disguise(key)(mnist_like))
    np.testing.assert_allclose(got, disguise(mnist_like, key), atol=1e-4)


def test_config_round_trip_holds_no_secret(key):
    layer = Disguise(key, name="disguise_owner")
    config = layer.get_config()
    assert config["fingerprint"] == key.fingerprint and config["spec"] == key.spec.to_dict()
    json.dumps(config)  # plain JSON
    clone = Disguise.from_config(config)
    assert clone.get_config() == config
    assert clone.key is None
    with pytest.raises(ValueError, match="has no secret"):
        clone(np.zeros((1, 14, 14, 1), "uint8"))


def test_compute_output_shape(key):
    assert Disguise(key).compute_output_shape((None, 14, 14, 1)) == (None, 14, 14, 1)


def test_layer_inside_tf_data_map(key, mnist_like):
    layer = Disguise(key)
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6))).batch(3).map(lambda x, y: (layer(x), y))
    xs = np.concatenate([x.numpy() for x, _ in ds])
    np.testing.assert_allclose(xs, disguise(mnist_like, key), atol=1e-4)


def test_noisy_layer_draws_fresh_noise_in_tf_data(mnist_like):
    key = make_key(image_shape=(14, 14, 1), block_size=7, noise=30)
    layer = Disguise(key)
    ds = tf.data.Dataset.from_tensor_slices(mnist_like).batch(6).map(layer)
    first, second = next(iter(ds)).numpy(), next(iter(ds)).numpy()
    assert not np.allclose(first, second)


def test_keras_file_round_trip_on_the_owner_side(key, mnist_like, tmp_path):
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key), keras.layers.Flatten(), keras.layers.Dense(3)])
    path = str(tmp_path / "owner.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].key == key
    np.testing.assert_allclose(loaded.predict(mnist_like, verbose=0), model.predict(mnist_like, verbose=0), atol=1e-4)


def test_keras_file_with_foreign_secret_is_refused(key, tmp_path):
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key)])
    path = str(tmp_path / "owner.keras")
    model.save(path)
    config = model.get_config()
    config["layers"][1]["config"]["fingerprint"] = "0" * 16
    bad = keras.Sequential.from_config(config)
    # Keras wraps the layer's KeyMismatchError in its own ValueError; the message survives.
    with pytest.raises(ValueError, match="fingerprint .* but the config says 0000000000000000"):
        bad.load_weights(path)


def test_model_fit_with_disguise_layer(key, mnist_like):
    y = np.arange(6) % 2
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(mnist_like, y, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert not model.layers[0].trainable_weights
