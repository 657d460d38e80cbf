"""The arrays a plan's hot path reads, handed to the backend once and without a copy.

A plan's matrices can be hundreds of MB (vector-mode RMT at 224x224x3, block
16: 196 matrices of 768x768 in float32, 0.46 GB). Embedded as a constant in
every traced graph they would be copied into each graph and each XLA program;
converted with `convert_to_tensor` they would be copied once more and pass
through a staging buffer of the same size. So:

- arrays up to `INLINE_BYTES` go to the backend as numpy arrays (a graph
  constant, placed next to the op that reads it, on any device);
- larger ones become one tensor, made once and captured by every graph that
  uses it. On TensorFlow that tensor shares the numpy array's memory (DLPack,
  on the host), which is why plan arrays are allocated with `aligned_empty`:
  TensorFlow needs 64-byte aligned buffers to share them.

>>> import numpy as np
>>> a = aligned_empty((3, 4), np.float32)
>>> a.ctypes.data % ALIGNMENT, a.shape, a.dtype.name
(0, (3, 4), 'float32')
>>> from keras import ops
>>> big = aligned_empty((2, 1024, 1024), np.float32)
>>> big[...] = 1.0
>>> t = hot_array(big)
>>> float(ops.convert_to_numpy(ops.sum(t)))
2097152.0
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["ALIGNMENT", "INLINE_BYTES", "aligned_empty", "as_aligned", "hot_array"]

# TensorFlow shares host buffers aligned to 64 bytes; 128 leaves room.
ALIGNMENT = 128
INLINE_BYTES = 16 * 2**20


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `ALIGNMENT`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


def as_aligned(array: np.ndarray, dtype=None) -> np.ndarray:
    """`array` in `dtype`, aligned and C-contiguous: itself when it already is, else an aligned copy."""
    array = np.asarray(array)
    dtype = array.dtype if dtype is None else np.dtype(dtype)
    if array.dtype == dtype and is_aligned(array):
        return array
    out = aligned_empty(array.shape, dtype)
    out[...] = array
    return out


def hot_array(array: np.ndarray):
    """`array` as the hot path hands it to `keras.ops`: itself when small, else a tensor made once.

    Call it once per array and keep the result (`BlockLinear` caches it). The
    array must not change afterwards: on TensorFlow the tensor shares its memory.
    """
    if array.nbytes <= INLINE_BYTES:
        return array
    if keras.backend.backend() != "tensorflow":
        return ops.convert_to_tensor(array)
    import tensorflow as tf

    # Made once, outside any function being traced, on the host: a captured
    # eager tensor is valid in every graph (tf.data, Keras, XLA) and never
    # becomes a copied graph constant.
    with tf.init_scope(), tf.device("/CPU:0"):
        if is_aligned(array) and array.dtype.kind == "f":
            try:
                tensor = tf.experimental.dlpack.from_dlpack(array.__dlpack__())
            except (AttributeError, BufferError, TypeError, ValueError, RuntimeError, tf.errors.OpError):
                pass  # no DLPack here: a copy works as well, with more memory
            else:
                array.flags.writeable = False  # shared with the tensor from now on
                return tensor
        return tf.convert_to_tensor(array)
