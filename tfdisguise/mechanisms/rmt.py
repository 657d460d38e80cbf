"""RMT: the block-wise randomized multidimensional transform, one secret matrix per block.

In `matrix` mode (the authors' code) each channel's bh x bw block B becomes
B @ R_i with R_i of size bw x bw; in `vector` mode the block is flattened over
pixels and channels, v @ R_i with R_i of size d x d. Both build a `BlockLinear`
(matrix mode through its Kronecker expansion), so RMT fuses with the other
linear steps.

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt="orthogonal", rmt_mode="matrix")
>>> step = spec.steps[0]
>>> r = step.material(np.random.default_rng(0), spec)
>>> r.shape, bool(np.allclose(r[0] @ r[0].T, np.eye(2)))
((4, 2, 2), True)
>>> step.build(r, spec).matrices.shape
(4, 4, 4)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from tfdisguise.mechanisms.linear import BlockLinear
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["RMT", "expand_matrix_mode", "random_matrix"]


def random_matrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """One n x n matrix: Haar-random orthogonal, or Gaussian with entries N(0, 1/n)."""
    g = rng.standard_normal((n, n))
    if kind == "projection":
        return g / np.sqrt(n)
    # Haar measure needs the sign fix: plain QR output is biased.
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))[np.newaxis, :]


def expand_matrix_mode(small: np.ndarray, bh: int, channels: int) -> np.ndarray:
    """Turns per-block bw x bw matrices into the equivalent d x d matrices.

    In `matrix` mode each channel's bh x bw block B becomes B @ R. On the block
    flattened as (row, col, channel) that is v @ kron(I_bh, kron(R, I_C)); the
    expanded form lets both modes share one batched matmul.

    >>> r = np.array([[[0., 1.], [1., 0.]]])
    >>> expand_matrix_mode(r, bh=1, channels=1)[0].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    eye_c = np.eye(channels)
    eye_h = np.eye(bh)
    return np.stack([np.kron(eye_h, np.kron(r, eye_c)) for r in small])


@register_step
@dataclasses.dataclass(frozen=True)
class RMT(Step):
    """Block-wise randomized multidimensional transform, one matrix per block.

    Args:
        kind: "orthogonal" (Haar-random) or "projection" (Gaussian, N(0, 1/n)).
        mode: "matrix" (each channel's bh x bw block B becomes B @ R_i, R_i is
            bw x bw, as in the authors' code) or "vector" (the block flattened
            over pixels and channels, v @ R_i with R_i of size d x d).
    """

    name: ClassVar[str] = "rmt"
    kind: str = "orthogonal"
    mode: str = "matrix"

    KINDS: ClassVar[tuple[str, ...]] = ("orthogonal", "projection")
    MODES: ClassVar[tuple[str, ...]] = ("matrix", "vector")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"`kind` must be one of {self.KINDS}. Received: kind={self.kind!r}")
        if self.mode not in self.MODES:
            raise ValueError(f"`mode` must be one of {self.MODES}. Received: mode={self.mode!r}")

    def matrix_size(self, spec) -> int:
        return spec.block_size[1] if self.mode == "matrix" else spec.block_dim

    def material(self, rng, spec):
        """[t, n, n] float64: R_i for each block position i (n = bw or d)."""
        n = self.matrix_size(spec)
        return np.stack([random_matrix(rng, n, self.kind) for _ in range(spec.num_blocks)])

    def build(self, material, spec):
        if self.mode == "matrix":
            material = expand_matrix_mode(material, spec.block_size[0], spec.image_shape[2])
        return BlockLinear(matrices=material)

    def reference(self, image, material, spec, rng):
        blocks = split_blocks(image, *spec.block_size)
        if self.mode == "matrix":
            out = [np.stack([b[:, :, ch] @ material[i] for ch in range(b.shape[2])], axis=-1)
                   for i, b in enumerate(blocks)]
        else:
            out = [(b.reshape(-1) @ material[i]).reshape(b.shape) for i, b in enumerate(blocks)]
        return join_blocks(out, spec)
