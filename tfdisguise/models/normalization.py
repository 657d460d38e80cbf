"""The input stem every model shares: a per-position `Normalization`.

RMT output is not on the 0..255 scale, and each pixel position has its own
statistics after a block transform, so the normalization is per position
(axis H, W, C), adapted on the (disguised) training images.

Block models ask for `block_size`: the mean stays per element, but the scale is
one number per block position (the root of the block's mean variance). Such a
normalization commutes with any orthogonal block transform and any block
permutation (the mean moves with the data, a block's total variance does not
change), so it does not turn an orthogonally disguised block into something a
block model has to undo first.

>>> x = np.random.default_rng(0).uniform(0, 255, (16, 4, 4, 1)).astype("float32")
>>> x[:, :2, :2] *= 0.1  # one quiet block
>>> variance = keras.ops.convert_to_numpy(normalization((4, 4, 1), x, block_size=2).variance)[0, :, :, 0]
>>> bool(np.allclose(variance[:2, :2], variance[0, 0])), bool(variance[0, 0] < variance[3, 3])
(True, True)
"""

from __future__ import annotations

import keras
import numpy as np

# Positions that never vary in the adaptation data (MNIST's empty border) would
# otherwise be divided by ~1e-7 at inference, turning any tiny deviation (noise,
# a reconstruction error) into a huge activation. Their variance is floored at
# this share of the mean variance.
VARIANCE_FLOOR = 0.01


def normalization(input_shape, adapt_data, block_size=None) -> keras.layers.Normalization:
    """A per-position Normalization, adapted on `adapt_data` (with a variance floor) when given.

    With `block_size`, the variance is averaged within each block (one scale per block position).
    """
    norm = keras.layers.Normalization(axis=(1, 2, 3), name="normalization")
    if adapt_data is not None:
        norm.adapt(adapt_data)
        variance = keras.ops.convert_to_numpy(norm.adapt_variance)
        if block_size is not None:
            variance = _block_mean(variance, block_size)
        norm.adapt_variance.assign(np.maximum(variance, VARIANCE_FLOOR * variance.mean()))
        norm.finalize_state()
    else:
        norm.build((None, *tuple(input_shape)))
    return norm


def _block_mean(values: np.ndarray, block_size) -> np.ndarray:
    """Each element replaced by the mean over its block (all channels), for [H, W, C] values."""
    bh, bw = (block_size, block_size) if isinstance(block_size, int) else block_size
    h, w, c = values.shape
    if h % bh or w % bw:
        raise ValueError(f"`block_size` {(bh, bw)} must divide the image shape {(h, w, c)}. "
                         f"Received: block_size={block_size!r}")
    blocks = values.reshape(h // bh, bh, w // bw, bw, c).mean(axis=(1, 3, 4), keepdims=True)
    return np.broadcast_to(blocks, (h // bh, bh, w // bw, bw, c)).reshape(h, w, c)
