"""`BlockLinear`: the affine block op that every linear step builds and that fuses.

out_block[j] = in_block[perm[j]] @ matrices[j] + bias[j]

Permutation, RMT (both modes) and affine maps such as negative-positive
(255 - x: matrices = -I, bias = 255) are all of this form, so consecutive linear
steps compose into one op: one gather plus one batched matmul and an add.

>>> import keras, numpy as np
>>> flip = BlockLinear(matrices=-np.eye(2)[None], bias=np.full((1, 2), 255.0))
>>> swap = BlockLinear(matrices=np.array([[[0.0, 1.0], [1.0, 0.0]]]))
>>> both = BlockLinear.compose(flip, swap)
>>> x = np.array([[[10.0, 20.0]]])  # [t=1, N=1, d=2]
>>> keras.ops.convert_to_numpy(both(x)).tolist()
[[[235.0, 245.0]]]
>>> keras.ops.convert_to_numpy(both.inverse()(both(x), dtype="float64")).tolist()
[[[10.0, 20.0]]]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np
from keras import ops

from tfdisguise.mechanisms.op import Op

__all__ = ["BlockLinear"]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BlockLinear(Op):
    """out_block[j] = in_block[perm[j]] @ matrices[j] + bias[j]; any part may be None.

    Args:
        perm: [t] int, the source block of each output block.
        matrices: [t, d, d], one square matrix per output block position.
        bias: [t, d], added after the matmul.
    """

    perm: np.ndarray | None = None
    matrices: np.ndarray | None = None
    bias: np.ndarray | None = None

    layout: ClassVar[str] = "blocks"
    linear: ClassVar[bool] = True

    def __post_init__(self):
        if self.perm is not None:
            perm = np.asarray(self.perm)
            if perm.ndim != 1 or perm.dtype.kind not in "iu" or sorted(perm.tolist()) != list(range(len(perm))):
                raise ValueError(f"`perm` must be a permutation of 0..t-1 (1-D ints). Received: perm={perm!r}")
            object.__setattr__(self, "perm", perm.astype(np.int32))
        if self.matrices is not None:
            m = np.asarray(self.matrices)
            if m.ndim != 3 or m.shape[1] != m.shape[2]:
                raise ValueError(f"`matrices` must be [t, d, d]. Received: matrices of shape {m.shape}")
            object.__setattr__(self, "matrices", m)
        if self.bias is not None:
            b = np.asarray(self.bias)
            if b.ndim != 2:
                raise ValueError(f"`bias` must be [t, d]. Received: bias of shape {b.shape}")
            object.__setattr__(self, "bias", b)
        sizes = {name: len(a) for name, a in self._parts().items() if a is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"`perm`, `matrices` and `bias` must cover the same t blocks. Received: {sizes}")
        if self.matrices is not None and self.bias is not None and self.bias.shape[1] != self.matrices.shape[2]:
            raise ValueError(
                f"`bias` must be [t, d] with the matrices' d = {self.matrices.shape[2]}. "
                f"Received: bias of shape {self.bias.shape}"
            )

    def _parts(self) -> dict:
        return {"perm": self.perm, "matrices": self.matrices, "bias": self.bias}

    def check(self, spec) -> None:
        t, d = spec.num_blocks, spec.block_dim
        for name, a in self._parts().items():
            if a is not None and len(a) != t:
                raise ValueError(f"`{name}` covers {len(a)} blocks but the spec has t = {t}. Received: shape {a.shape}")
        for name, a in (("matrices", self.matrices), ("bias", self.bias)):
            if a is not None and a.shape[-1] != d:
                raise ValueError(
                    f"`{name}` must act on blocks of d = bh*bw*C = {d} values. Received: shape {a.shape}"
                )

    @staticmethod
    def compose(first, second) -> BlockLinear:
        """`first` followed by `second` (any two linear ops), as one `BlockLinear`.

        (x[p1] @ M1 + b1)[p2] @ M2 + b2 = x[p1[p2]] @ (M1[p2] @ M2) + (b1[p2] @ M2 + b2)
        """
        p1, m1, b1 = first.perm, first.matrices, first.bias
        p2, m2, b2 = second.perm, second.matrices, second.bias
        if p2 is None:
            perm = p1
        else:
            perm = p2 if p1 is None else p1[p2]
            m1 = None if m1 is None else m1[p2]
            b1 = None if b1 is None else b1[p2]
        if m1 is None:
            matrices = m2
        elif m2 is None:
            matrices = m1
        else:
            matrices = m1 @ m2
        if b1 is not None and m2 is not None:
            b1 = np.einsum("td,tde->te", b1, m2)
        if b1 is None:
            bias = b2
        elif b2 is None:
            bias = b1
        else:
            bias = b1 + b2
        return BlockLinear(perm=perm, matrices=matrices, bias=bias)

    def then(self, other) -> BlockLinear:
        """This op followed by `other`, as one op."""
        return BlockLinear.compose(self, other)

    def inverse(self) -> BlockLinear:
        # Invert in float64: projection matrices can be poorly conditioned.
        inv_m = None if self.matrices is None else np.linalg.inv(self.matrices.astype(np.float64))
        bias = None
        if self.bias is not None:
            b = self.bias.astype(np.float64)
            bias = -(b if inv_m is None else np.einsum("td,tde->te", b, inv_m))
        if self.perm is None:
            return BlockLinear(perm=None, matrices=inv_m, bias=bias)
        inv_p = np.argsort(self.perm).astype(np.int32)
        return BlockLinear(
            perm=inv_p,
            matrices=None if inv_m is None else inv_m[inv_p],
            bias=None if bias is None else bias[inv_p],
        )

    @functools.cached_property
    def matrices_f32(self) -> np.ndarray | None:
        return None if self.matrices is None else self.matrices.astype(np.float32)

    @functools.cached_property
    def matrices_f64(self) -> np.ndarray | None:
        return None if self.matrices is None else self.matrices.astype(np.float64)

    @functools.cached_property
    def bias_f32(self) -> np.ndarray | None:
        return None if self.bias is None else self.bias.astype(np.float32)[:, np.newaxis, :]

    @functools.cached_property
    def bias_f64(self) -> np.ndarray | None:
        return None if self.bias is None else self.bias.astype(np.float64)[:, np.newaxis, :]

    def __call__(self, blocks, uniform=None, dtype="float32"):
        if self.perm is not None:
            # Before the cast when the input is uint8: moving 1-byte pixels is 4x cheaper.
            blocks = ops.take(blocks, self.perm, axis=0)
        if self.matrices is None and self.bias is None:
            return blocks
        blocks = ops.cast(blocks, dtype)
        f64 = dtype == "float64"
        if self.matrices is not None:
            blocks = ops.matmul(blocks, self.matrices_f64 if f64 else self.matrices_f32)
        if self.bias is not None:
            blocks = blocks + (self.bias_f64 if f64 else self.bias_f32)
        return blocks
