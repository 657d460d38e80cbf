"""A plain per-image numpy reference of the disguise, written independently of the
library's block layout and fused ops (the tests compare against it, and the speed
benchmark uses it as the 'authors'-code-style' baseline)."""

import numpy as np


def split_blocks(image, bh, bw):
    h, w, _ = image.shape
    return [image[r:r + bh, c:c + bw, :] for r in range(0, h, bh) for c in range(0, w, bw)]


def join_blocks(blocks, h, w, bh, bw):
    out = np.zeros((h, w, blocks[0].shape[2]), dtype=blocks[0].dtype)
    per_row = w // bw
    for i, b in enumerate(blocks):
        r, c = divmod(i, per_row)
        out[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw, :] = b
    return out


def disguise_image(image, spec, materials, rng=None):
    """One image, loops over blocks and channels, like the authors' code."""
    h, w, c = spec.image_shape
    bh, bw = spec.block_size
    blocks = [b.astype(np.float64) for b in split_blocks(np.asarray(image, np.float64), bh, bw)]
    for step, material in zip(spec.steps, materials):
        if step.name == "rmt" and step.mode == "matrix":
            blocks = [np.stack([b[:, :, ch] @ material[i] for ch in range(c)], axis=-1) for i, b in enumerate(blocks)]
        elif step.name == "rmt":
            blocks = [(b.reshape(-1) @ material[i]).reshape(b.shape) for i, b in enumerate(blocks)]
        elif step.name == "permute":
            blocks = [blocks[material[j]] for j in range(len(blocks))]
        elif step.name == "noise":
            blocks = [b + rng.uniform(0, step.level, size=b.shape) for b in blocks]
        else:
            raise ValueError(step.name)
    return join_blocks(blocks, h, w, bh, bw)


def disguise_batch(images, spec, materials, rng=None):
    return np.stack([disguise_image(x, spec, materials, rng) for x in images])
