"""A numpy path for small batches: the same plan, without a TensorFlow call.

For one image, calling a TensorFlow function costs more than the disguise itself (a 28x28 image is 16 small
matmuls). The owner's client disguises each query just before it is sent, so there that fixed cost is the
client's overhead over a raw request. This path runs a plan's fused affine ops (`BlockLinear`) and its noise
(`AddNoise`) in numpy; any other op (a numpy-bridge cipher, say) makes `supports` False and the caller keeps
the TensorFlow path. The noise is U[0, level] from a numpy Generator seeded from the OS's CSPRNG.

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.mechanisms import apply
>>> from tfdisguise.spec import Spec
>>> key = Key(bytes(32), Spec.create((8, 8, 3), 4, noise=0))
>>> x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
>>> supports(key.plan), bool(np.allclose(apply_numpy(x, key.plan, None), np.asarray(apply(x, key.plan)), atol=1e-3))
(True, True)
"""

from __future__ import annotations

import secrets

import numpy as np

from tfdisguise.mechanisms.layout import np_from_blocks, np_to_blocks
from tfdisguise.mechanisms.linear import BlockLinear
from tfdisguise.mechanisms.noise import AddNoise

__all__ = ["apply_numpy", "new_rng", "supports"]


def supports(plan) -> bool:
    """Whether every op of `plan` has a numpy form here."""
    return all(isinstance(op, (BlockLinear, AddNoise)) for op in plan.ops)


def new_rng() -> np.random.Generator:
    """A numpy Generator seeded from the OS's CSPRNG (fresh noise in every process)."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _linear(blocks: np.ndarray, op: BlockLinear) -> np.ndarray:
    if op.perm is not None:
        blocks = blocks[op.perm]
    if op.matrices is not None:
        m = op.matrices.astype(np.float32, copy=False)
        if op.rows is None:
            blocks = np.matmul(blocks, m)
        else:  # row form, as `linear._row_matmul`: every row of every channel times the block's bw x bw matrix
            bh, bw, c = op.rows
            t = len(m)
            x = blocks.reshape(t, -1, bw, c).transpose(0, 1, 3, 2)
            y = np.matmul(x.reshape(t, -1, bw), m)
            blocks = y.reshape(t, -1, c, bw).transpose(0, 1, 3, 2).reshape(t, -1, bh * bw * c)
    if op.bias is not None:
        blocks = blocks + op.bias[:, np.newaxis, :].astype(np.float32, copy=False)
    return blocks


def apply_numpy(images, plan, rng: np.random.Generator | None) -> np.ndarray:
    """`plan` applied to `images` ([N, H, W, C], uint8 or float) in numpy; float32 out.

    `rng` draws the noise (required when the plan adds noise). Raises ValueError for a plan that `supports`
    refuses.
    """
    if not supports(plan):
        raise ValueError(f"This plan has ops without a numpy form: {[type(op).__name__ for op in plan.ops]}")
    x = np.asarray(images).astype(np.float32)
    for op in plan.ops:
        if isinstance(op, BlockLinear):
            x = np_from_blocks(_linear(np_to_blocks(x, plan.spec), op), plan.spec)
        elif op.level:
            if rng is None:
                raise ValueError("This plan adds noise, so `rng` is required.")
            x = x + rng.uniform(0.0, op.level, x.shape).astype(np.float32)
    return np.ascontiguousarray(x)
