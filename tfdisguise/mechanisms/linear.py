"""`BlockLinear`: the affine block op that every linear step builds and that fuses.

out_block[j] = in_block[perm[j]] @ matrices[j] + bias[j]

Permutation, RMT (both modes) and affine maps such as negative-positive
(255 - x: matrices = -I, bias = 255) are all of this form, so consecutive linear
steps compose into one op: one gather plus one batched matmul and an add.

The matrices come in two forms:

- dense (`rows=None`): [t, d, d], acting on each block flattened over
  (row, column, channel), d = bh*bw*C (vector-mode RMT, user steps);
- row form (`rows=(bh, bw, C)`): [t, bw, bw], applied to every row of every
  channel of the block, B -> B @ M (matrix-mode RMT). It is never expanded on
  the hot path: expanding it to kron(I_bh, M, I_C) would multiply its memory and
  work by (bh*C)^2 and bh*C. `dense_matrices()` gives the expansion on demand,
  for small specs.

Ops of the same form compose exactly (a permutation composes with either);
a row-form op and a dense one compose through the expansion, which
`Plan.compile` allows only while it is small (`fusable`).

>>> import keras, numpy as np
>>> flip = BlockLinear(matrices=-np.eye(2)[None], bias=np.full((1, 2), 255.0))
>>> swap = BlockLinear(matrices=np.array([[[0.0, 1.0], [1.0, 0.0]]]))
>>> both = BlockLinear.compose(flip, swap)
>>> x = np.array([[[10.0, 20.0]]])  # [t=1, N=1, d=2]
>>> keras.ops.convert_to_numpy(both(x)).tolist()
[[[235.0, 245.0]]]
>>> keras.ops.convert_to_numpy(both.inverse()(both(x), dtype="float64")).tolist()
[[[10.0, 20.0]]]

Row form: one 2x2 block of one channel, each row multiplied by M.

>>> m = np.array([[[1.0, 2.0], [3.0, 4.0]]])
>>> op = BlockLinear(matrices=m, rows=(2, 2, 1))
>>> block = np.array([[[1.0, 0.0, 0.0, 1.0]]])  # rows [1, 0] and [0, 1]
>>> keras.ops.convert_to_numpy(op(block)).tolist()
[[[1.0, 2.0, 3.0, 4.0]]]
>>> op.dense_matrices().shape
(1, 4, 4)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import ClassVar

import numpy as np
from keras import ops

from tfdisguise.mechanisms.constants import aligned_empty, as_aligned, hot_array
from tfdisguise.mechanisms.op import Op

__all__ = ["DENSE_FUSE_BYTES", "XLA_MAX_DENSE_DIM", "BlockLinear", "expand_matrix_mode"]

# Row-form and dense ops fuse through the dense expansion only up to this size.
DENSE_FUSE_BYTES = 64 * 2**20
# Dense matrices of at least this d run outside XLA: measured on CPU at batch 32,
# TensorFlow's batched matmul beats XLA's from d = 147 (2x at d = 768), while
# below it XLA's fusion of the layout changes wins.
XLA_MAX_DENSE_DIM = 128


def expand_matrix_mode(small: np.ndarray, bh: int, channels: int) -> np.ndarray:
    """Turns per-block bw x bw matrices (row form) into the equivalent d x d matrices.

    In `matrix` mode each channel's bh x bw block B becomes B @ R. On the block
    flattened as (row, col, channel) that is v @ kron(I_bh, kron(R, I_C)).

    >>> r = np.array([[[0., 1.], [1., 0.]]])
    >>> expand_matrix_mode(r, bh=1, channels=1)[0].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    eye_c = np.eye(channels)
    eye_h = np.eye(bh)
    return np.stack([np.kron(eye_h, np.kron(r, eye_c)) for r in small])


def apply_numpy(x: np.ndarray, matrices: np.ndarray, rows) -> np.ndarray:
    """x [t, n, d] times each block's matrix, in numpy (dense, or row form when `rows`)."""
    if rows is None:
        return np.einsum("tnd,tde->tne", x, matrices)
    bh, bw, c = rows
    t, n, _ = x.shape
    y = np.einsum("tnhwc,twv->tnhvc", x.reshape(t, n, bh, bw, c), matrices)
    return y.reshape(t, n, bh * bw * c)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BlockLinear(Op):
    """out_block[j] = in_block[perm[j]] @ matrices[j] + bias[j]; any part may be None.

    Args:
        perm: [t] int, the source block of each output block.
        matrices: one square matrix per output block position: [t, d, d] (dense),
            or [t, bw, bw] in row form (with `rows`).
        bias: [t, d], added after the matmul.
        rows: None for dense matrices, or (bh, bw, C): the matrices act on every
            row of bw values of every channel of a bh x bw x C block.
    """

    perm: np.ndarray | None = None
    matrices: np.ndarray | None = None
    bias: np.ndarray | None = None
    rows: tuple[int, int, int] | None = None

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
                raise ValueError(f"`matrices` must be [t, n, n]. Received: matrices of shape {m.shape}")
            object.__setattr__(self, "matrices", m)
        if self.bias is not None:
            b = np.asarray(self.bias)
            if b.ndim != 2:
                raise ValueError(f"`bias` must be [t, d]. Received: bias of shape {b.shape}")
            object.__setattr__(self, "bias", b)
        self._check_rows()
        sizes = {name: len(a) for name, a in self._parts().items() if a is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"`perm`, `matrices` and `bias` must cover the same t blocks. Received: {sizes}")
        if self.matrices is not None and self.bias is not None and self.bias.shape[1] != self.block_dim:
            raise ValueError(
                f"`bias` must be [t, d] with the matrices' d = {self.block_dim}. "
                f"Received: bias of shape {self.bias.shape}"
            )
        # The hot path's arrays, converted once per dtype (see `_hot`).
        object.__setattr__(self, "_hot_cache", {})
        object.__setattr__(self, "_hot_lock", threading.Lock())

    def _check_rows(self):
        if self.rows is None:
            return
        try:
            rows = tuple(int(v) for v in self.rows)
        except (TypeError, ValueError):
            rows = ()
        if len(rows) != 3 or min(rows) < 1:
            raise ValueError(f"`rows` must be None or (bh, bw, C), three positive ints. Received: rows={self.rows!r}")
        if self.matrices is None:
            rows = None  # no matrices: nothing acts on rows
        elif self.matrices.shape[1] != rows[1]:
            raise ValueError(
                f"With `rows` = {rows}, `matrices` must be [t, bw, bw] with bw = {rows[1]}. "
                f"Received: matrices of shape {self.matrices.shape}"
            )
        object.__setattr__(self, "rows", rows)

    def _parts(self) -> dict:
        return {"perm": self.perm, "matrices": self.matrices, "bias": self.bias}

    @property
    def block_dim(self) -> int | None:
        """d, the length of a flattened block (None when no part says)."""
        if self.rows is not None:
            return self.rows[0] * self.rows[1] * self.rows[2]
        if self.matrices is not None:
            return self.matrices.shape[2]
        return None if self.bias is None else self.bias.shape[1]

    @property
    def jit(self) -> bool:
        """False for a large dense matmul, which runs faster outside XLA (see `XLA_MAX_DENSE_DIM`)."""
        return self.matrices is None or self.rows is not None or self.block_dim < XLA_MAX_DENSE_DIM

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the d x d matrices in float32 (what `dense_matrices` would build); 0 without matrices."""
        if self.matrices is None:
            return 0
        return len(self.matrices) * self.block_dim**2 * 4

    def dense_matrices(self, max_bytes: int = 2**30) -> np.ndarray | None:
        """The [t, d, d] matrices, expanding the row form (for attacks and tests on small specs).

        Refuses an expansion above `max_bytes` (in float32 terms) instead of
        exhausting memory.
        """
        if self.matrices is None or self.rows is None:
            return self.matrices
        if self.dense_nbytes > max_bytes:
            raise ValueError(
                f"Expanding {len(self.matrices)} row-form matrices of {self.rows[1]}x{self.rows[1]} to "
                f"d x d (d = {self.block_dim}) needs {self.dense_nbytes / 1e9:.2f} GB, over "
                f"`max_bytes`={max_bytes / 1e9:.2f} GB. Received: rows={self.rows}"
            )
        return expand_matrix_mode(self.matrices, self.rows[0], self.rows[2])

    def check(self, spec) -> None:
        t, d = spec.num_blocks, spec.block_dim
        for name, a in self._parts().items():
            if a is not None and len(a) != t:
                raise ValueError(f"`{name}` covers {len(a)} blocks but the spec has t = {t}. Received: shape {a.shape}")
        if self.rows is not None:
            want = (*spec.block_size, spec.image_shape[2])
            if self.rows != want:
                raise ValueError(
                    f"`rows` must be the spec's (bh, bw, C) = {want}. Received: rows={self.rows}"
                )
        elif self.matrices is not None and self.matrices.shape[-1] != d:
            raise ValueError(
                f"`matrices` must act on blocks of d = bh*bw*C = {d} values. Received: shape {self.matrices.shape}"
            )
        if self.bias is not None and self.bias.shape[-1] != d:
            raise ValueError(
                f"`bias` must act on blocks of d = bh*bw*C = {d} values. Received: shape {self.bias.shape}"
            )

    @staticmethod
    def _form(op):
        return None if op.matrices is None else getattr(op, "rows", None)

    @staticmethod
    def fusable(first, second, max_bytes: int | None = None) -> bool:
        """Whether `compose(first, second)` stays small: same form, or a dense expansion under
        `max_bytes` (default `DENSE_FUSE_BYTES`)."""
        max_bytes = DENSE_FUSE_BYTES if max_bytes is None else max_bytes
        if first.matrices is None or second.matrices is None:
            return True
        if BlockLinear._form(first) == BlockLinear._form(second):
            return True
        return max(BlockLinear._as_op(first).dense_nbytes, BlockLinear._as_op(second).dense_nbytes) <= max_bytes

    @staticmethod
    def _as_op(op) -> BlockLinear:
        if isinstance(op, BlockLinear):
            return op
        return BlockLinear(perm=op.perm, matrices=op.matrices, bias=op.bias, rows=getattr(op, "rows", None))

    @staticmethod
    def compose(first, second, reuse_first: bool = False) -> BlockLinear:
        """`first` followed by `second` (any two linear ops), as one `BlockLinear`.

        (x[p1] @ M1 + b1)[p2] @ M2 + b2 = x[p1[p2]] @ (M1[p2] @ M2) + (b1[p2] @ M2 + b2)

        A row-form op and a dense one are composed through the dense expansion
        (see `fusable` for when that is cheap). `reuse_first=True` says that
        nothing else will read `first`'s matrices: they are then reordered in
        place instead of copied (a second copy of 0.46 GB at 224x224x3, block 16,
        vector mode).
        """
        p1, m1, b1, r1 = first.perm, first.matrices, first.bias, BlockLinear._form(first)
        p2, m2, b2, r2 = second.perm, second.matrices, second.bias, BlockLinear._form(second)
        if m1 is not None and m2 is not None and r1 != r2:
            m1 = BlockLinear._as_op(first).dense_matrices()
            m2 = BlockLinear._as_op(second).dense_matrices()
            r1 = r2 = None
        if p2 is None:
            perm = p1
        else:
            perm = p2 if p1 is None else p1[p2]
            if m1 is None:
                pass
            elif reuse_first and m1 is first.matrices and m1.flags.writeable:
                m1 = _permute_rows_in_place(m1, p2)
            else:
                m1 = _take_rows(m1, p2)
            b1 = None if b1 is None else b1[p2]
        if m1 is None:
            matrices, rows = m2, r2
        elif m2 is None:
            matrices, rows = m1, r1
        else:
            matrices, rows = m1 @ m2, r1
        if b1 is not None and m2 is not None:
            b1 = apply_numpy(b1[:, np.newaxis, :], m2, r2)[:, 0, :]
        if b1 is None:
            bias = b2
        elif b2 is None:
            bias = b1
        else:
            bias = b1 + b2
        return BlockLinear(perm=perm, matrices=matrices, bias=bias, rows=rows)

    def then(self, other) -> BlockLinear:
        """This op followed by `other`, as one op."""
        return BlockLinear.compose(self, other)

    def inverse(self) -> BlockLinear:
        # In float64, built only here (for `undisguise`): projection matrices can
        # be poorly conditioned. Inverting the matrices the forward pass uses
        # (float32 for RMT) undoes exactly the map that was applied.
        inv_m = None if self.matrices is None else np.linalg.inv(self.matrices.astype(np.float64))
        bias = None
        if self.bias is not None:
            b = self.bias.astype(np.float64)
            bias = -(b if inv_m is None else apply_numpy(b[:, np.newaxis, :], inv_m, self.rows)[:, 0, :])
        if self.perm is None:
            return BlockLinear(perm=None, matrices=inv_m, bias=bias, rows=self.rows)
        inv_p = np.argsort(self.perm).astype(np.int32)
        return BlockLinear(
            perm=inv_p,
            matrices=None if inv_m is None else inv_m[inv_p],
            bias=None if bias is None else bias[inv_p],
            rows=self.rows,
        )

    @functools.cached_property
    def nbytes(self) -> int:
        """Bytes of the op's own arrays (perm, matrices, bias) as they are held."""
        return sum(a.nbytes for a in self._parts().values() if a is not None)

    def _hot(self, name: str, dtype: str):
        """`matrices` or `bias` in `dtype`, ready for the backend (see `constants.hot_array`); made once."""
        key = (name, dtype)
        value = self._hot_cache.get(key)
        if value is None:
            with self._hot_lock:
                value = self._hot_cache.get(key)
                if value is None:
                    array = getattr(self, name)
                    if name == "bias":
                        array = array[:, np.newaxis, :]
                    aligned = as_aligned(array, dtype)
                    if name == "matrices" and aligned.dtype == array.dtype and aligned is not array:
                        # The same values in memory the backend can share: keep one copy, not two.
                        object.__setattr__(self, "matrices", aligned)
                    value = hot_array(aligned)
                    self._hot_cache[key] = value
        return value

    def __call__(self, blocks, uniform=None, dtype="float32"):
        if self.perm is not None:
            # Before the cast when the input is uint8: moving 1-byte pixels is 4x cheaper.
            blocks = ops.take(blocks, self.perm, axis=0)
        if self.matrices is None and self.bias is None:
            return blocks
        blocks = ops.cast(blocks, dtype)
        if self.matrices is not None:
            matrices = self._hot("matrices", dtype)
            if self.rows is None:
                blocks = ops.matmul(blocks, matrices)
            else:
                blocks = _row_matmul(blocks, matrices, self.rows)
        if self.bias is not None:
            blocks = blocks + self._hot("bias", dtype)
        return blocks


def _row_matmul(blocks, matrices, rows):
    """[t, N, d] blocks, every row of every channel times its block's bw x bw matrix."""
    bh, bw, c = rows
    t = matrices.shape[0]
    x = ops.reshape(blocks, (t, -1, bw, c))  # [t, N*bh, bw, C]
    if c > 1:
        x = ops.transpose(x, (0, 1, 3, 2))  # the contracted axis last: [t, N*bh, C, bw]
    y = ops.matmul(ops.reshape(x, (t, -1, bw)), matrices)
    if c > 1:
        y = ops.transpose(ops.reshape(y, (t, -1, c, bw)), (0, 1, 3, 2))
    return ops.reshape(y, (t, -1, bh * bw * c))


def _take_rows(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """a[perm] in aligned memory (see `constants`), without an intermediate copy."""
    # mode="wrap": with the default mode="raise" numpy first copies `a` when `out` is given.
    return np.take(a, perm, axis=0, out=aligned_empty(a.shape, a.dtype), mode="wrap")


def _permute_rows_in_place(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """a[:] = a[perm], following the permutation's cycles with one row of scratch."""
    done = np.zeros(len(perm), bool)
    for start in range(len(perm)):
        if done[start]:
            continue
        saved = a[start].copy()
        j = start
        while True:
            done[j] = True
            k = int(perm[j])
            if k == start:
                a[j] = saved
                break
            a[j] = a[k]
            j = k
    return a
