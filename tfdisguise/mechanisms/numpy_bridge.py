"""The escape hatch: running an op that declares `backend = "numpy"`.

Some mechanisms cannot be written in `keras.ops`; a block cipher such as the
authors' block-wise AES (through the `cryptography` package) is the usual case.
Such an op declares `backend = "numpy"` and its `__call__` takes and returns
numpy arrays (same shape, in its declared layout). This module is the one place
that runs it:

- eagerly, on any backend (`disguise`, `undisguise`, a layer called on concrete
  arrays): plain numpy on the concrete values;
- in a TensorFlow graph (`wrap` inside `tf.data`, the `Disguise` layer inside
  `model.fit`/`predict`): through `tf.numpy_function`.

DESIGN.md section 9 forbids `tf.numpy_function` in general, and for good
reasons: the function is Python, so a graph that holds it cannot be saved as a
SavedModel, cannot be sent to the `tf.data` service, and cannot be compiled by
XLA. That is acceptable here, and only here, because a mechanism's op runs on the
owner's side, which holds the key: the disguise is never part of the model that
is exported for serving (`export` refuses a model with a `Disguise` layer), and
shards are written already disguised. The plan never hands a numpy op to
`compile_fn`, and the `Disguise` layer turns off Keras's automatic XLA for a
model that holds one.

Inside a compiled function on another backend (JAX `jit`, for example) there is
no equivalent that this project supports, so the call raises a clear error
instead of failing silently.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["run_numpy_op"]


def _call(op, array: np.ndarray, dtype: str) -> np.ndarray:
    out = np.asarray(op(np.asarray(array), None, dtype))
    if out.shape != array.shape:
        raise ValueError(
            f"The numpy op {type(op).__name__} must keep the shape of its input in its layout. "
            f"Received: {array.shape} -> {out.shape}"
        )
    return out.astype(dtype, copy=False)


def run_numpy_op(op, x, dtype: str = "float32"):
    """Runs numpy op `op` on tensor `x`; returns a `dtype` tensor of the same shape."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly() and not isinstance(x, keras.KerasTensor):
            return tf.convert_to_tensor(_call(op, np.asarray(x), dtype))
        # The documented exception to DESIGN.md's rule (see the module docstring).
        y = tf.numpy_function(lambda a: _call(op, a, dtype), [x], tf.as_dtype(dtype), stateful=False)
        y.set_shape(x.shape)
        return y
    try:
        array = ops.convert_to_numpy(x)
    except Exception as e:
        raise RuntimeError(
            f"The disguise step op {type(op).__name__} runs in numpy (it declares backend='numpy'), so it "
            f"cannot run inside a compiled {backend} function. Disguise the data eagerly with "
            "tfdisguise.disguise, or use the TensorFlow backend, where it runs through tf.numpy_function."
        ) from e
    return ops.convert_to_tensor(_call(op, array, dtype))
