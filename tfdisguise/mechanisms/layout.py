"""The two layouts an op can work in: image `[N, H, W, C]` and block `[t, N, d]`.

The block layout numbers the t = (H/bh)(W/bw) blocks row-major and flattens
each block over (row, column, channel) into a vector of length d = bh*bw*C, so
one gather plus one batched matmul `[t, N, d] @ [t, d, d]` carries out any
block-wise linear map.

>>> import keras, numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2)
>>> x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
>>> blocks = keras.ops.convert_to_numpy(to_blocks(x, spec))
>>> blocks.shape, blocks[1, 0].tolist()
((4, 1, 4), [2.0, 3.0, 6.0, 7.0])
>>> bool(np.array_equal(keras.ops.convert_to_numpy(from_blocks(blocks, spec)), x))
True
"""

from __future__ import annotations

import numpy as np
from keras import ops

__all__ = ["LAYOUTS", "check_images", "from_blocks", "np_from_blocks", "np_to_blocks", "to_blocks"]

LAYOUTS = ("image", "blocks")


def to_blocks(x, spec):
    """[N, H, W, C] -> [t, N, d], blocks numbered row-major."""
    c, (bh, bw), (gh, gw) = spec.image_shape[2], spec.block_size, spec.grid
    x = ops.reshape(x, (-1, gh, bh, gw, bw, c))
    x = ops.transpose(x, (1, 3, 0, 2, 4, 5))
    return ops.reshape(x, (gh * gw, -1, bh * bw * c))


def from_blocks(blocks, spec):
    """[t, N, d] -> [N, H, W, C]; the inverse of `to_blocks`."""
    (h, w, c), (bh, bw), (gh, gw) = spec.image_shape, spec.block_size, spec.grid
    x = ops.reshape(blocks, (gh, gw, -1, bh, bw, c))
    x = ops.transpose(x, (2, 0, 3, 1, 4, 5))
    return ops.reshape(x, (-1, h, w, c))


def np_to_blocks(x: np.ndarray, spec) -> np.ndarray:
    """`to_blocks` in numpy, for callers that stay out of the backend (the small-batch path, the attacks)."""
    c, (bh, bw), (gh, gw) = spec.image_shape[2], spec.block_size, spec.grid
    x = np.asarray(x).reshape(-1, gh, bh, gw, bw, c).transpose(1, 3, 0, 2, 4, 5)
    return x.reshape(gh * gw, -1, bh * bw * c)


def np_from_blocks(blocks: np.ndarray, spec) -> np.ndarray:
    """`from_blocks` in numpy."""
    (h, w, c), (bh, bw), (gh, gw) = spec.image_shape, spec.block_size, spec.grid
    x = np.asarray(blocks).reshape(gh, gw, -1, bh, bw, c).transpose(2, 0, 3, 1, 4, 5)
    return x.reshape(-1, h, w, c)


def check_images(x, spec) -> bool:
    """Raises ValueError unless `x` is [H, W, C] or [N, H, W, C] of `spec`; True for a single image."""
    shape = tuple(x.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"`images` must have rank 3 (H, W, C) or 4 (N, H, W, C) with (H, W, C) = "
            f"{spec.image_shape}. Received: shape={shape}"
        )
    got = shape[-3:]
    if got[2] is not None and got[2] != spec.image_shape[2]:
        raise ValueError(
            f"`images` have {got[2]} channels but the key's spec expects {spec.image_shape[2]} "
            f"(image shape {spec.image_shape}). Received: shape={shape}"
        )
    for g, e in zip(got[:2], spec.image_shape[:2]):
        if g is not None and g != e:
            raise ValueError(
                f"`images` must be {spec.image_shape[0]}x{spec.image_shape[1]} to match the key's "
                f"spec {spec.image_shape}. Received: shape={shape}"
            )
    return len(shape) == 3
