"""`simple_cnn`: the paper's MNIST network."""

from __future__ import annotations

from keras import layers

from tfdisguise.models.registry import register_model


@register_model("simple_cnn")
def simple_cnn(x, num_classes, *, input_shape=None, spec=None, dropout: float = 0.5):
    """Conv 5x5x32, pool, conv 5x5x64, pool, dense 1024, dropout, dense classes (softmax)."""
    del input_shape, spec  # the network is the same for every geometry
    x = layers.Conv2D(32, 5, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(1024, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes, activation="softmax")(x)
