"""Hashed negative-positive: each block is inverted (x -> 255 - x) or not, by a keyed hash of its own content.

An experiment against the second-order (eigenbasis-alignment) attacks on RMT.
Those attacks read each block position's covariance, which a fixed
transform only rotates, and then fix every eigenvector's sign from the mean or
the third moment. Here each block of each image is, before RMT, either kept or
replaced by its negative, and which one depends on the block itself:

    z = x - 127.5;  s = (-1) ** (sum_k T[j, k, fold(x_k)] mod 2);  out = s * z + 127.5

where fold(x_k) = round(|x_k - 127.5| - 0.5) in 0..127 is the same for a pixel
and its negative, and T is a secret table of random bits for each block
position j and pixel k. So:

- the step is deterministic and exactly invertible by the owner: negating a
  block leaves every fold, hence the hash, unchanged, and applying the step
  again undoes it (it is its own inverse);
- to anyone without T, the sign of each block looks random from image to image
  (where the block has any grey level that varies), so in the centred pixels
  the first and third moments vanish while the second moment is unchanged. An
  eigenbasis aligner still finds each eigenvector, but no odd moment tells its
  sign;
- a model can learn to ignore a block's sign (a first layer with weights w and
  -w), so the data should stay learnable.

What it does not hide: even moments (the second moment of x - 127.5 is public
knowledge for an attacker with public data), so an attacker who fixes the
relative signs of the eigenvectors from fourth moments, and then each block's
sign from what images look like (MNIST's background is dark), can still get
through. Blocks with no grey levels (an all-black MNIST border) always hash the
same way. Measured in the privacy map (docs/RESULTS.md section 7, MNIST block
7 with RMT, permutation and noise 100): no attack we have reaches 0.2 on it,
but the spectral attacks do not model it, and a simple CNN learns 46-59%
against 95% plain. It is a trial, not a recommendation.

With noise after the step, `undisguise` gets a block's sign wrong wherever the
noise moves a fold across a level: an owner who needs the plain images back
should not add noise after it.

Written in `keras.ops` (a gather and a sum), so it runs in `tf.data`, under XLA
and on every backend.

Example:

>>> from tfdisguise.key import Key
>>> from tfdisguise.mechanisms import disguise, undisguise
>>> from tfdisguise.spec import Spec
>>> key = Key(bytes(32), Spec.create((8, 8, 1), block_size=4, rmt=None, permute=False, negpos_hash=True))
>>> x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
>>> y = disguise(x, key)
>>> bool(np.all((y == x) | (y == 255 - x.astype("float32"))))  # every pixel kept or inverted
True
>>> blocks = (y != x).reshape(64, 2, 4, 2, 4).any(axis=(2, 4))
>>> bool(0.3 < blocks.mean() < 0.7)  # about half the blocks inverted
True
>>> bool(np.array_equal(undisguise(y, key), x))
True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np
from keras import ops

from tfdisguise.mechanisms.op import Op
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["HashedNegPos", "NegPosHash"]

LEVELS = 128  # folds of the 256 byte values: x and 255 - x share one
CENTRE = 127.5


def _fold(x):
    return np.clip(np.rint(np.abs(np.asarray(x, np.float64) - CENTRE) - 0.5), 0, LEVELS - 1).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class HashedNegPos(Op):
    """Inverts each block, in block layout `[t, N, d]`, when its keyed hash is odd; its own inverse.

    Args:
        table: [t, d, 128] bits, the secret hash table (key material).
    """

    table: np.ndarray

    layout: ClassVar[str] = "blocks"

    def check(self, spec) -> None:
        want = (spec.num_blocks, spec.block_dim, LEVELS)
        if tuple(self.table.shape) != want:
            raise ValueError(f"`table` must be [t, d, {LEVELS}] = {want} for this spec. Received: {self.table.shape}")

    @functools.cached_property
    def _flat(self) -> np.ndarray:
        return np.asarray(self.table, np.float32).reshape(-1)

    @functools.cached_property
    def _offsets(self) -> np.ndarray:
        t, d, _ = self.table.shape
        return (LEVELS * np.arange(t * d, dtype=np.int32)).reshape(t, 1, d)

    def __call__(self, blocks, uniform=None, dtype="float32"):
        z = ops.cast(blocks, dtype) - CENTRE
        fold = ops.clip(ops.round(ops.abs(z) - 0.5), 0, LEVELS - 1)
        bits = ops.take(self._flat, ops.cast(fold, "int32") + self._offsets)
        odd = ops.mod(ops.sum(bits, axis=-1, keepdims=True), 2.0)
        return z * ops.cast(1.0 - 2.0 * odd, dtype) + CENTRE

    def inverse(self) -> HashedNegPos:
        return self


@register_step
@dataclasses.dataclass(frozen=True)
class NegPosHash(Step):
    """Keyed, content-hashed negative-positive per block (see the module docstring). Not linear."""

    name: ClassVar[str] = "negpos_hash"
    linear: ClassVar[bool] = False

    def material(self, rng, spec) -> np.ndarray:
        """[t, d, 128] uint8 bits: the hash table of each block position and pixel."""
        return rng.integers(0, 2, (spec.num_blocks, spec.block_dim, LEVELS), dtype=np.uint8)

    def build(self, material, spec) -> HashedNegPos:
        return HashedNegPos(table=np.asarray(material, np.uint8))

    def reference(self, image, material, spec, rng):
        out = []
        for j, block in enumerate(split_blocks(image, *spec.block_size)):
            folds = _fold(block).reshape(-1)
            odd = int(material[j, np.arange(len(folds)), folds].sum()) % 2
            out.append(255.0 - block if odd else block)
        return join_blocks(out, spec)
