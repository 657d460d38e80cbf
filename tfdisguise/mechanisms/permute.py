"""Permute: a keyed permutation of block positions, the same for every image and channel.

Output block j is input block pi(j). It builds a `BlockLinear` with only a
permutation, so it fuses with the RMT and any other linear step around it.

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt=None)
>>> perm = Permute().material(np.random.default_rng(0), spec)
>>> sorted(perm.tolist()), Permute().build(perm, spec).linear
([0, 1, 2, 3], True)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from tfdisguise.mechanisms.cost import Cost
from tfdisguise.mechanisms.linear import BlockLinear
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["Permute"]


@register_step
@dataclasses.dataclass(frozen=True)
class Permute(Step):
    """Keyed permutation of block positions: output block j is input block pi(j)."""

    name: ClassVar[str] = "permute"

    def material(self, rng, spec):
        return rng.permutation(spec.num_blocks).astype(np.int32)

    def build(self, material, spec):
        return BlockLinear(perm=material)

    def cost(self, spec) -> Cost:
        # A gather moves each value once: memory traffic, no arithmetic.
        return Cost(plan_bytes=4 * spec.num_blocks)

    def reference(self, image, material, spec, rng):
        blocks = split_blocks(image, *spec.block_size)
        return join_blocks([blocks[material[j]] for j in range(len(blocks))], spec)
