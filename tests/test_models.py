import keras
import numpy as np
import pytest

from tfdisguise import models


def pixels(shape, n=8):
    return np.random.default_rng(0).uniform(0, 255, (n, *shape)).astype("float32")


@pytest.mark.parametrize("name,shape", [("simple_cnn", (28, 28, 1)), ("resnet20", (32, 32, 3)),
                                        ("keras.applications.MobileNetV2", (32, 32, 3))])
def test_build_shapes(name, shape):
    model = models.build(name, shape, 10, adapt_data=pixels(shape))
    assert model.output_shape == (None, 10)
    assert model.layers[1].name == "normalization"


def test_simple_cnn_is_the_papers_network():
    model = models.build("simple_cnn", (28, 28, 1), 10, adapt_data=pixels((28, 28, 1)))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert [d.units for d in dense] == [1024, 10]
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


def test_resnet20_has_twenty_weight_layers():
    model = models.build("resnet20", (32, 32, 3), 10, adapt_data=pixels((32, 32, 3)))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert len(convs) + len(dense) == 20


def test_normalization_is_adapted_and_floored():
    x = np.zeros((50, 8, 8, 1), np.float32)
    x[:, 2:6, 2:6] = np.random.default_rng(0).uniform(0, 255, (50, 4, 4, 1))
    model = models.build("simple_cnn", (8, 8, 1), 2, adapt_data=x)
    norm = model.get_layer("normalization")
    out = keras.ops.convert_to_numpy(norm(np.ones((1, 8, 8, 1), np.float32)))
    # A constant-zero border position must not blow a deviation of 1 up by 1e7.
    assert np.abs(out).max() < 10
    inner = keras.ops.convert_to_numpy(norm(x[:50]))[:, 2:6, 2:6]
    assert abs(inner.mean()) < 0.1 and 0.8 < inner.std() < 1.2


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`name` \(--model\) must be one of"):
        models.build("vgg", (8, 8, 1), 2, adapt_data=pixels((8, 8, 1)))
    with pytest.raises(ValueError, match="Unknown Keras application 'Nope'"):
        models.build("keras.applications.Nope", (32, 32, 3), 2, adapt_data=pixels((32, 32, 3)))


def test_a_new_family_is_one_registered_function():
    @models.register_model("toy_linear")
    def toy_linear(x, num_classes, *, input_shape, spec=None, units=3):
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(units, activation="relu")(x)
        return keras.layers.Dense(num_classes, activation="softmax")(x)

    try:
        assert "toy_linear" in models.MODEL_NAMES
        model = models.build("toy_linear", (4, 4, 1), 3, adapt_data=pixels((4, 4, 1)), units=5)
        assert isinstance(model, keras.Model) and model.name == "toy_linear"
        assert model.output_shape == (None, 3)
        assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [5, 3]
    finally:
        del models.MODELS["toy_linear"]


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20"])
def test_every_family_takes_the_same_arguments(name):
    from tfdisguise import Spec

    spec = Spec.create((8, 8, 1), block_size=4)
    model = models.build(name, (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)), spec=spec)
    assert isinstance(model, keras.Model) and model.input_shape == (None, 8, 8, 1)
    assert model.output_shape == (None, 3)


def test_build_without_adapt_data_refuses_with_the_fix():
    with pytest.raises(ValueError, match=r"`adapt_data` is required.*x_train\[:4096\]"):
        models.build("simple_cnn", (8, 8, 1), 2, adapt_data=None)
