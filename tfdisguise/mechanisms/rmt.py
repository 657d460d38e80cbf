"""RMT: the block-wise randomized multidimensional transform, one secret matrix per block.

In `matrix` mode (the authors' code) each channel's bh x bw block B becomes
B @ R_i with R_i of size bw x bw; in `vector` mode the block is flattened over
pixels and channels, v @ R_i with R_i of size d x d. Both build a `BlockLinear`
(matrix mode in its row form, never expanded), so RMT fuses with the other
linear steps.

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt="orthogonal", rmt_mode="matrix")
>>> step = spec.steps[0]
>>> r = step.material(np.random.default_rng(0), spec)
>>> r.shape, bool(np.allclose(r[0] @ r[0].T, np.eye(2)))
((4, 2, 2), True)
>>> op = step.build(r, spec)
>>> op.matrices.shape, op.matrices.dtype.name, op.rows
((4, 2, 2), 'float32', (2, 2, 1))
>>> step.cost(spec).matrix_bytes  # 4 matrices of 2x2 float32
64
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from tfdisguise.mechanisms.constants import aligned_empty, as_aligned
from tfdisguise.mechanisms.cost import Cost, transient_bytes
from tfdisguise.mechanisms.linear import BlockLinear, expand_matrix_mode
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["RMT", "expand_matrix_mode", "random_matrices", "random_matrix"]

# Below this size a QR takes microseconds: threads would cost more than they save.
_PARALLEL_MIN_N = 64


def _haar(gaussian: np.ndarray) -> np.ndarray:
    # Haar measure needs the sign fix: plain QR output is biased.
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))[np.newaxis, :]


def random_matrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """One n x n matrix: Haar-random orthogonal, or Gaussian with entries N(0, 1/n)."""
    g = rng.standard_normal((n, n))
    if kind == "projection":
        return g / np.sqrt(n)
    return _haar(g)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _single_threaded_blas():
    # One QR per thread, each on one BLAS thread: on a loaded machine a
    # multithreaded BLAS spins for cores it does not get (5x slower here), and
    # the results are bit-identical either way.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def random_matrices(rng: np.random.Generator, count: int, n: int, kind: str, dtype=np.float64) -> np.ndarray:
    """[count, n, n] of `random_matrix(rng, n, kind)`, in order, written into one `dtype` array.

    The same values as `count` calls of `random_matrix` (the Gaussian draws stay
    in order on `rng`; only the QRs run in parallel threads), so key files
    derive bit-identical matrices however many cores there are. With
    dtype=float32 the float64 matrices exist only one at a time.

    >>> a = random_matrices(np.random.default_rng(1), 3, 70, "orthogonal")
    >>> rng = np.random.default_rng(1)
    >>> all(np.array_equal(m, random_matrix(rng, 70, "orthogonal")) for m in a)
    True
    """
    out = aligned_empty((count, n, n), dtype)  # so that the backend can share it (see `constants`)
    workers = min(_cpus(), count)
    if kind == "projection" or n < _PARALLEL_MIN_N or workers < 2:
        with _single_threaded_blas() if kind != "projection" and n >= _PARALLEL_MIN_N else contextlib.nullcontext():
            for i in range(count):
                out[i] = random_matrix(rng, n, kind)
        return out

    def fill(i, gaussian):
        out[i] = _haar(gaussian)

    with _single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for i in range(count):
            pending.append(pool.submit(fill, i, rng.standard_normal((n, n))))
            # Bounds the Gaussians waiting for a thread (memory) and surfaces errors early.
            if len(pending) > workers:
                pending.popleft().result()
        for future in pending:
            future.result()
    return out


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
        return random_matrices(rng, spec.num_blocks, self.matrix_size(spec), self.kind)

    def plan_material(self, rng, spec):
        """The same matrices in float32, the form the plan runs: half the memory, no float64 copy."""
        return random_matrices(rng, spec.num_blocks, self.matrix_size(spec), self.kind, dtype=np.float32)

    def build(self, material, spec):
        matrices = as_aligned(material, np.float32)  # a copy only when given float64 (`Key.materials`)
        if self.mode == "matrix":
            return BlockLinear(matrices=matrices, rows=(*spec.block_size, spec.image_shape[2]))
        return BlockLinear(matrices=matrices)

    def cost(self, spec) -> Cost:
        n = self.matrix_size(spec)
        matrix_bytes = spec.num_blocks * n * n * 4
        return Cost(
            plan_bytes=transient_bytes(matrix_bytes) + 3 * n * n * 8,  # + one float64 QR at a time per thread
            matrix_bytes=matrix_bytes,
            flops_per_image=2 * int(np.prod(spec.image_shape)) * n,
        )

    def reference(self, image, material, spec, rng):
        blocks = split_blocks(image, *spec.block_size)
        if self.mode == "matrix":
            out = [np.stack([b[:, :, ch] @ material[i] for ch in range(b.shape[2])], axis=-1)
                   for i, b in enumerate(blocks)]
        else:
            out = [(b.reshape(-1) @ material[i]).reshape(b.shape) for i, b in enumerate(blocks)]
        return join_blocks(out, spec)
