"""The model registry and `build`, the one way every model is made."""

from __future__ import annotations

from collections.abc import Callable

import keras

from tfdisguise.models.normalization import normalization

__all__ = ["MODELS", "MODEL_NAMES", "build", "register_model"]

# name -> family(x, num_classes, *, input_shape, spec, **options) -> output tensor,
# where x is the normalized input tensor.
MODELS: dict[str, Callable] = {}
APPLICATIONS_PREFIX = "keras.applications."


# Families whose input normalization has one scale per block position (see normalization.py).
BLOCK_NORMALIZED: set[str] = set()


def register_model(name: str, *, block_normalization: bool = False):
    """Registers a model family under `name` (a decorator).

    The family is called as `family(x, num_classes, input_shape=..., spec=..., **options)`
    with `x` the normalized input tensor, and returns the softmax output tensor.
    `spec` is the disguise's public spec (or None for plain data), for block-aware models.
    `block_normalization=True` normalizes the input with one scale per block position
    (the spec's block size, or the family's `block_size` option), which commutes with
    orthogonal block transforms and block permutations.
    """

    def decorate(fn):
        MODELS[name] = fn
        (BLOCK_NORMALIZED.add if block_normalization else BLOCK_NORMALIZED.discard)(name)
        return fn

    return decorate


def _names() -> tuple[str, ...]:
    return (*sorted(MODELS), APPLICATIONS_PREFIX + "<Name>")


class _Names(tuple):
    """MODEL_NAMES stays current as families register."""

    def __iter__(self):
        return iter(_names())

    def __len__(self):
        return len(_names())

    def __contains__(self, item):
        return item in _names()

    def __repr__(self):
        return repr(_names())


MODEL_NAMES = _Names()


def build(name: str, input_shape, num_classes: int, *, adapt_data, spec=None, **options) -> keras.Model:
    """Builds an uncompiled classifier with softmax output, named `name`.

    Args:
        name: a registered family ("simple_cnn", "resnet20", ...) or
            "keras.applications.<Name>" (for example "keras.applications.ResNet50V2"),
            always with `weights=None`.
        input_shape: (H, W, C) of the (disguised) images.
        num_classes: number of classes.
        adapt_data: images (array or dataset) to adapt the input normalization on;
            pass the disguised training images when training on disguised data
            (a few thousand are plenty). Required: without it the model would
            see raw 0..255 values (or RMT output on its own scale) and train
            badly, so `build` refuses rather than guess.
        spec: the disguise's public `Spec`, for models that use its block geometry.
        **options: family-specific options (for example `dropout` for simple_cnn).
    """
    try:
        input_shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape!r}") from None
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape}")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    if adapt_data is None:
        raise ValueError(
            "`adapt_data` is required: pass a few thousand training images (disguised ones when the model will "
            "train on disguised data), e.g. build(..., adapt_data=x_train[:4096]), so that the per-position input "
            "normalization is adapted. Received: adapt_data=None"
        )
    if name.startswith(APPLICATIONS_PREFIX):
        family = MODELS["keras.applications"]
        options = dict(options, application=name[len(APPLICATIONS_PREFIX):])
    elif name in MODELS and name != "keras.applications":
        family = MODELS[name]
    else:
        raise ValueError(f"`name` (--model) must be one of {list(MODEL_NAMES)}. Received: name={name!r}")
    block = None
    if name in BLOCK_NORMALIZED:
        block = tuple(spec.block_size) if spec is not None else options.get("block_size")
    inputs = keras.Input(input_shape, name="image")
    x = normalization(input_shape, adapt_data, block_size=block)(inputs)
    outputs = family(x, num_classes, input_shape=input_shape, spec=spec, **options)
    model_name = name.replace(APPLICATIONS_PREFIX, "")
    return keras.Model(inputs, outputs, name=model_name)
