"""Classifiers for disguised (or plain) images.

Every model starts with a `Normalization` layer adapted on its training data:
RMT output is not on the 0..255 scale, and each pixel position has its own
statistics after a block transform, so the normalization is per position.

Example:

>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype("float32")
>>> model = build("simple_cnn", (28, 28, 1), 10, adapt_data=x)
>>> model.output_shape
(None, 10)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

__all__ = ["build", "simple_cnn", "resnet20", "MODEL_NAMES"]

MODEL_NAMES = ("simple_cnn", "resnet20", "keras.applications.<Name>")


# Positions that never vary in the adaptation data (MNIST's empty border) would
# otherwise be divided by ~1e-7 at inference, turning any tiny deviation (noise,
# a reconstruction error) into a huge activation. Their variance is floored at
# this share of the mean variance.
VARIANCE_FLOOR = 0.01


def _normalization(input_shape, adapt_data):
    norm = layers.Normalization(axis=(1, 2, 3), name="normalization")
    if adapt_data is not None:
        norm.adapt(adapt_data)
        variance = keras.ops.convert_to_numpy(norm.adapt_variance)
        norm.adapt_variance.assign(np.maximum(variance, VARIANCE_FLOOR * variance.mean()))
        norm.finalize_state()
    else:
        norm.build((None,) + tuple(input_shape))
    return norm


def simple_cnn(input_shape, num_classes, *, dropout: float = 0.5, name: str = "simple_cnn") -> list:
    """The paper's MNIST network: conv 5x5x32, pool, conv 5x5x64, pool, dense 1024, dense classes."""
    return [
        layers.Conv2D(32, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(1024, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(num_classes, activation="softmax"),
    ]


def _resnet_block(x, filters, stride, weight_decay):
    reg = keras.regularizers.l2(weight_decay)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg)(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(layers.Add()([x, y]))


def resnet20(x, num_classes, *, weight_decay: float = 1e-4):
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 filters."""
    reg = keras.regularizers.l2(weight_decay)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            x = _resnet_block(x, filters, 2 if stage > 0 and block == 0 else 1, weight_decay)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)


def build(name: str, input_shape, num_classes: int, *, adapt_data=None) -> keras.Model:
    """Builds an uncompiled classifier with softmax output.

    Args:
        name: "simple_cnn", "resnet20", or "keras.applications.<Name>" (for
            example "keras.applications.ResNet50V2"), always with `weights=None`.
        input_shape: (H, W, C) of the (disguised) images.
        num_classes: number of classes.
        adapt_data: images (array or dataset) to adapt the input normalization on;
            pass the disguised training images when training on disguised data.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape}")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    inputs = keras.Input(input_shape, name="image")
    x = _normalization(input_shape, adapt_data)(inputs)
    if name == "simple_cnn":
        for layer in simple_cnn(input_shape, num_classes):
            x = layer(x)
        outputs = x
    elif name == "resnet20":
        outputs = resnet20(x, num_classes)
    elif name.startswith("keras.applications."):
        app_name = name.split(".", 2)[2]
        app = getattr(keras.applications, app_name, None)
        if app is None or not callable(app):
            raise ValueError(f"Unknown Keras application {app_name!r}. Received: name={name!r}")
        backbone = app(weights=None, include_top=True, input_shape=input_shape, classes=num_classes,
                       classifier_activation="softmax")
        outputs = backbone(x)
    else:
        raise ValueError(f"`name` must be one of {MODEL_NAMES}. Received: name={name!r}")
    return keras.Model(inputs, outputs, name=name.replace("keras.applications.", ""))
