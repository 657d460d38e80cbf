"""The `Disguise` Keras layer."""

from __future__ import annotations

import secrets

import keras
import numpy as np

from tfdisguise import mechanisms, pixels
from tfdisguise.key import Key, KeyMismatchError
from tfdisguise.mechanisms.eager import lacks_channel_axis
from tfdisguise.spec import Spec

__all__ = ["Disguise"]


@keras.saving.register_keras_serializable(package="tfdisguise")
class Disguise(keras.layers.Layer):
    """Applies a keyed disguise (block RMT, permutation, noise, ...) to images.

    **A model that contains this layer contains the key.** Its weights hold the
    secret, so such a model must stay with the data owner: `tfdisguise.export`
    refuses it. `get_config` holds only the public spec and the key fingerprint,
    never the secret; a `.keras` file saved on the owner's side restores the
    secret from its weights and checks it against the fingerprint.

    Noise is fresh at every call, in training and in inference alike: the owner's
    client disguises queries the same way the training data was disguised.

    Every registered step works here. A step whose op runs in numpy (the escape
    hatch for mechanisms that `keras.ops` cannot express, see
    `tfdisguise.mechanisms.numpy_bridge`) runs through `tf.numpy_function` on the
    TensorFlow backend, eagerly on concrete arrays on other backends, and raises
    a clear error inside a compiled non-TensorFlow function.

    Args:
        key: a `tfdisguise.Key`.
        check_pixels: on the TensorFlow backend, assert that float inputs are on
            the 0..255 scale (not 0..1, in range, finite), as `wrap` does; a
            failure raises `InvalidArgumentError` naming the fix. Other backends
            trace the layer into code that cannot raise, so they do not check.
        spec, fingerprint: used only by `from_config`; pass `key` instead.
        **kwargs: standard layer arguments (`name`, ...).

    Input shape:
        `(H, W, C)` or `(batch, H, W, C)` matching the key's image shape; uint8
        or float, on the 0..255 scale. For a one-channel key, `(batch, H, W)`
        (grayscale without the channel axis) too.

    Output shape:
        Same as the input, float32; with the channel axis added for input
        without one (`(batch, H, W, 1)`), as `tfdisguise.disguise` does.

    Example:

    >>> key = Key.generate(Spec.create((28, 28, 1), block_size=7, noise=100))
    >>> layer = Disguise(key)
    >>> x = np.zeros((2, 28, 28, 1), dtype="uint8")
    >>> tuple(layer(x).shape)
    (2, 28, 28, 1)
    >>> "secret" in str(layer.get_config())
    False
    """

    def __init__(self, key: Key | None = None, *, check_pixels: bool = True, spec=None, fingerprint=None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if key is not None:
            if not isinstance(key, Key):
                raise TypeError(f"`key` must be a tfdisguise.Key. Received: key={type(key).__name__}")
            spec, fingerprint = key.spec, key.fingerprint
        elif spec is None or fingerprint is None:
            raise ValueError("`key` is required. Received: key=None")
        self.spec = Spec.from_dict(spec) if isinstance(spec, dict) else spec
        self.fingerprint = str(fingerprint)
        self.check_pixels = bool(check_pixels)
        self._key = None
        self._seed_generator = (
            keras.random.SeedGenerator(secrets.randbits(31)) if self.spec.noise_level > 0 else None
        )
        if key is not None:
            self._set_key(key)

    def _set_key(self, key: Key) -> None:
        self._key = key
        # A step that runs through the numpy escape hatch (tf.numpy_function)
        # cannot be compiled by XLA: this keeps Keras's automatic jit_compile off.
        self.supports_jit = not key.plan.runs_numpy

    def __call__(self, inputs, *args, **kwargs):
        # Concrete images are checked here, before Keras wraps any error of `call` in its own report: a user who
        # passes 0..1 images reads the PixelRangeError alone. Symbolic ones get the graph assertion in `call`.
        if self.check_pixels and _is_concrete(inputs):
            pixels.check_pixels(np.asarray(inputs))
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        if self._key is None:
            raise ValueError(
                f"This Disguise layer (key {self.fingerprint}) has no secret: it was built from a config "
                "without its weights. Load it from the owner's .keras file."
            )
        uniform = mechanisms.uniform_source(self._seed_generator) if self._seed_generator else None
        if self.check_pixels and keras.backend.backend() == "tensorflow":
            inputs = pixels.assert_pixels(inputs)
        if lacks_channel_axis(inputs.shape, self.spec.image_shape):
            inputs = keras.ops.expand_dims(inputs, -1)
        return mechanisms.apply(inputs, self._key.plan, uniform)

    def compute_output_shape(self, input_shape):
        if lacks_channel_axis(input_shape, self.spec.image_shape):
            return tuple(input_shape[:-2]) + self.spec.image_shape
        return tuple(input_shape[:-3]) + self.spec.image_shape

    def get_config(self):
        config = super().get_config()
        config.update({"spec": self.spec.to_dict(), "fingerprint": self.fingerprint,
                       "check_pixels": self.check_pixels})
        return config

    # The secret is the layer's only real state. Saving it as a weight keeps it
    # out of config.json; restoring it re-derives the material and checks it.
    def save_own_variables(self, store):
        if self._key is not None:
            store["secret"] = np.frombuffer(self._key.secret_bytes(), dtype=np.uint8).copy()

    def load_own_variables(self, store):
        if "secret" not in store:
            raise ValueError(f"The saved Disguise layer (key {self.fingerprint}) has no secret in its weights.")
        key = Key(bytes(np.asarray(store["secret"], dtype=np.uint8)), self.spec)
        if key.fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"The secret in the saved weights has fingerprint {key.fingerprint}, but the config says "
                f"{self.fingerprint}: the file is corrupt or was tampered with."
            )
        self._set_key(key)

    @property
    def key(self) -> Key | None:
        return self._key


def _is_concrete(inputs) -> bool:
    """Whether `inputs` holds values now (numpy, an eager tensor), not a symbolic tensor being traced."""
    if isinstance(inputs, np.ndarray):
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.executing_eagerly() and isinstance(inputs, tf.Tensor) and hasattr(inputs, "numpy")
