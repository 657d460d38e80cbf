"""`resnet20`: He et al.'s CIFAR ResNet-20."""

from __future__ import annotations

import keras
from keras import layers

from tfdisguise.models.registry import register_model


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


@register_model("resnet20")
def resnet20(x, num_classes, *, input_shape=None, spec=None, weight_decay: float = 1e-4):
    """3 stages of 3 basic blocks, 16/32/64 filters, global average pooling, softmax."""
    del input_shape, spec
    reg = keras.regularizers.l2(weight_decay)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            x = _resnet_block(x, filters, 2 if stage > 0 and block == 0 else 1, weight_decay)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)
