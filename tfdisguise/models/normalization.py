"""The input stem every model shares: a per-position `Normalization`.

RMT output is not on the 0..255 scale, and each pixel position has its own
statistics after a block transform, so the normalization is per position
(axis H, W, C), adapted on the (disguised) training images.
"""

from __future__ import annotations

import keras
import numpy as np

# Positions that never vary in the adaptation data (MNIST's empty border) would
# otherwise be divided by ~1e-7 at inference, turning any tiny deviation (noise,
# a reconstruction error) into a huge activation. Their variance is floored at
# this share of the mean variance.
VARIANCE_FLOOR = 0.01


def normalization(input_shape, adapt_data) -> keras.layers.Normalization:
    """A per-position Normalization, adapted on `adapt_data` (with a variance floor) when given."""
    norm = keras.layers.Normalization(axis=(1, 2, 3), name="normalization")
    if adapt_data is not None:
        norm.adapt(adapt_data)
        variance = keras.ops.convert_to_numpy(norm.adapt_variance)
        norm.adapt_variance.assign(np.maximum(variance, VARIANCE_FLOOR * variance.mean()))
        norm.finalize_state()
    else:
        norm.build((None, *tuple(input_shape)))
    return norm
