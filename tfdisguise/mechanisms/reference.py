"""A plain per-image numpy reference of the disguise, written independently of the
library's block layout and fused ops.

Each step provides its own `Step.reference(image, material, spec, rng)`, a
direct per-image, per-block loop like the authors' code; this module only
splits and joins blocks and drives the steps in order. The tests compare the
library against it, and the speed benchmark uses it as the per-image baseline.

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt=None, permute=True)
>>> perm = np.array([3, 2, 1, 0])
>>> image = np.arange(16.0).reshape(4, 4, 1)
>>> disguise_image(image, spec, [perm])[:, :, 0].tolist()[0]
[10.0, 11.0, 8.0, 9.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["disguise_batch", "disguise_image", "join_blocks", "split_blocks"]


def split_blocks(image, bh, bw) -> list:
    """[H, W, C] -> the list of bh x bw x C blocks, row-major."""
    h, w, _ = image.shape
    return [image[r:r + bh, c:c + bw, :] for r in range(0, h, bh) for c in range(0, w, bw)]


def join_blocks(blocks, spec) -> np.ndarray:
    """The inverse of `split_blocks` for `spec`'s geometry."""
    (h, w, c), (bh, bw) = spec.image_shape, spec.block_size
    out = np.zeros((h, w, c), dtype=blocks[0].dtype)
    per_row = w // bw
    for i, b in enumerate(blocks):
        r, col = divmod(i, per_row)
        out[r * bh:(r + 1) * bh, col * bw:(col + 1) * bw, :] = b
    return out


def disguise_image(image, spec, materials, rng=None) -> np.ndarray:
    """One image [H, W, C] through every step's own reference, in float64."""
    x = np.asarray(image, np.float64)
    for step, material in zip(spec.steps, materials):
        x = step.reference(x, material, spec, rng)
    return x


def disguise_batch(images, spec, materials, rng=None) -> np.ndarray:
    """`disguise_image` over a batch [N, H, W, C]."""
    return np.stack([disguise_image(x, spec, materials, rng) for x in images])
