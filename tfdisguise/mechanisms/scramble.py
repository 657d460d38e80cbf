"""Block scrambling: Kiya-style encryption-then-compression (EtC) transforms inside each block.

Each block (bh x bw x C) is, in this order:

1. rotated by 0, 90, 180 or 270 degrees (counter-clockwise, `np.rot90`; only 0
   or 180 when the block is not square),
2. flipped left-right or not,
3. negative-positive transformed or not (x -> 255 - x),
4. its colour channels shuffled (output channel c is input channel perm[c]).

The choices come from the key. `per_position=False` ("shared") draws one set of
choices for every block, as in the learnable encryptions that use one key for
all blocks; `per_position=True` draws them for each block position, like
Madono et al.'s ELE. The block positions themselves are scrambled by the
`permute` step, which `Spec.create` adds by default, as EtC does.

Every one of these is an affine map of the block (a permutation of its d
values, a sign, a bias of 255), so the step builds a `BlockLinear` that fuses
with RMT and the permutation: scrambling then costs nothing at run time.

Example:

>>> from tfdisguise.key import Key
>>> from tfdisguise.mechanisms import disguise, undisguise
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 3), block_size=2, rmt=None, scramble="per_position")
>>> spec.describe()
'block 2x2: block_scramble(per-position) > permute'
>>> key = Key(bytes(32), spec)
>>> len(key.plan.ops)  # scrambling and permutation fused into one op
1
>>> x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
>>> bool(np.array_equal(undisguise(disguise(x, key), key), x))
True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from tfdisguise.mechanisms.cost import Cost, transient_bytes
from tfdisguise.mechanisms.linear import BlockLinear
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["BlockScramble", "scramble_block"]

VARIANTS = ("shared", "per_position")


def scramble_block(block: np.ndarray, choice, negate_level: float = 255.0) -> np.ndarray:
    """One block [bh, bw, C] scrambled by one row of the step's material: (rotation, flip, negate, perm...).

    >>> b = np.arange(4.0).reshape(2, 2, 1)
    >>> scramble_block(b, [1, 0, 0, 0])[:, :, 0].tolist()  # 90 degrees counter-clockwise
    [[1.0, 3.0], [0.0, 2.0]]
    >>> scramble_block(b, [0, 1, 1, 0])[:, :, 0].tolist()  # flipped left-right, then 255 - x
    [[254.0, 255.0], [252.0, 253.0]]
    """
    rotation, flip, negate = int(choice[0]), int(choice[1]), int(choice[2])
    perm = np.asarray(choice[3:], dtype=np.int64)
    out = np.rot90(block, rotation, axes=(0, 1))
    if flip:
        out = out[:, ::-1, :]
    if negate:
        out = negate_level - out
    return out[:, :, perm]


@register_step
@dataclasses.dataclass(frozen=True)
class BlockScramble(Step):
    """Per-block rotation, flip, negative-positive and channel shuffle (Kiya-style EtC).

    Args:
        per_position: True to draw the choices for each block position (ELE-like),
            False to draw one set for all blocks ("shared").
        rotate, flip, negpos, shuffle_channels: which of the four transforms to
            use (all by default). A transform that is off is the identity; the
            others are drawn exactly as when all are on.
    """

    name: ClassVar[str] = "block_scramble"
    per_position: bool = False
    rotate: bool = True
    flip: bool = True
    negpos: bool = True
    shuffle_channels: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"`{f.name}` must be True or False. Received: {f.name}={value!r}")
            object.__setattr__(self, f.name, bool(value))

    @classmethod
    def variant(cls, name: str) -> BlockScramble:
        """The step for `Spec.create(scramble=name)`: "shared" or "per_position" ("per-position" also accepted)."""
        key = str(name).replace("-", "_")
        if key not in VARIANTS:
            raise ValueError(f"`scramble` must be one of {('none',) + VARIANTS}. Received: scramble={name!r}")
        return cls(per_position=key == "per_position")

    def describe(self) -> str:
        parts = ["per-position" if self.per_position else "shared"]
        parts += [f"no {f}" for f in ("rotate", "flip", "negpos", "shuffle_channels") if not getattr(self, f)]
        return f"{self.name}({'; '.join(parts)})"

    def material(self, rng, spec) -> np.ndarray:
        """[t, 3 + C] int32: each position's rotation (quarter turns), flip, negate and channel permutation."""
        (bh, bw), c, t = spec.block_size, spec.image_shape[2], spec.num_blocks
        rows = t if self.per_position else 1
        quarter_turns = rng.integers(0, 4, rows) if bh == bw else 2 * rng.integers(0, 2, rows)
        flips = rng.integers(0, 2, rows)
        negates = rng.integers(0, 2, rows)
        perms = np.stack([rng.permutation(c) for _ in range(rows)])
        choice = np.concatenate([
            (quarter_turns * self.rotate)[:, None],
            (flips * self.flip)[:, None],
            (negates * self.negpos)[:, None],
            perms if self.shuffle_channels else np.tile(np.arange(c), (rows, 1)),
        ], axis=1).astype(np.int32)
        return np.repeat(choice, t // rows, axis=0)

    def build(self, material, spec) -> BlockLinear:
        d = spec.block_dim
        shape = spec.block_size + (spec.image_shape[2],)
        index = np.arange(d, dtype=np.float64).reshape(shape)
        matrices = np.zeros((len(material), d, d))
        bias = np.zeros((len(material), d))
        for j, choice in enumerate(material):
            # Scrambling the pixels' own indices says where each output value comes from.
            source = scramble_block(index, [choice[0], choice[1], 0, *choice[3:]]).reshape(-1).astype(np.int64)
            sign = -1.0 if choice[2] else 1.0
            matrices[j, source, np.arange(d)] = sign
            bias[j] = 255.0 if choice[2] else 0.0
        return BlockLinear(matrices=matrices, bias=bias if material[:, 2].any() else None)

    def cost(self, spec) -> Cost:
        # `build` writes one dense d x d signed permutation per position, in float64 before the plan's float32.
        d, t = spec.block_dim, spec.num_blocks
        matrix_bytes = t * d * d * 4
        return Cost(plan_bytes=transient_bytes(matrix_bytes) + t * d * d * 8, matrix_bytes=matrix_bytes,
                    flops_per_image=2 * int(np.prod(spec.image_shape)) * d)

    def reference(self, image, material, spec, rng):
        blocks = split_blocks(image, *spec.block_size)
        return join_blocks([scramble_block(b, choice) for b, choice in zip(blocks, material)], spec)
