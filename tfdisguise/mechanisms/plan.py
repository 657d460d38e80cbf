"""The plan: a spec's ops, fused, and the two functions that run it (`apply`, `invert`).

Consecutive linear ops (RMT, permutation, affine steps) are fused at compile
time into one `BlockLinear`. That op moves images into the block layout
`[t, N, d]` (block position, image, flattened block of length d = bh*bw*C), runs
one gather plus one batched matmul (plus a bias), and moves them back; under XLA
(as in `wrap`) the whole op is one fused kernel. The matmul is
`[t, N, d] @ [t, d, d]` in vector mode and `[t, N*bh*C, bw] @ [t, bw, bw]` in
matrix mode, whose bw x bw matrices are never expanded to d x d. A matrix-mode
op and a dense (vector-mode) one fuse only while the expansion is small;
otherwise they stay two ops. Noise is i.i.d. per element, so it is added in
image layout between linear ops.

The plan holds what the forward pass reads, in float32. The float64 inverse
ops are built on the first `invert` (the owner's `undisguise`) and kept.

`_run` knows nothing about particular ops: it reads each op's declarations
(`layout`, `backend`, `stochastic`; see `op.py`) and `invert` runs each op's
`inverse()` in reverse order.

Example (noise-free round trip):

>>> import keras, numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt="orthogonal", rmt_mode="vector")
>>> rng = np.random.default_rng(0)
>>> plan = Plan.compile(spec, [s.build(s.material(rng, spec), spec) for s in spec.steps])
>>> len(plan.ops), plan.exact_inverse  # rmt and permute fused into one op
(1, True)
>>> x = rng.uniform(0, 255, size=(3, 4, 4, 1)).astype("float32")
>>> y = keras.ops.convert_to_numpy(apply(x, plan))
>>> bool(np.allclose(keras.ops.convert_to_numpy(invert(y, plan)), x, atol=1e-3))
True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import keras
from keras import ops

from tfdisguise.mechanisms.layout import check_images, from_blocks, to_blocks
from tfdisguise.mechanisms.linear import BlockLinear
from tfdisguise.mechanisms.numpy_bridge import run_numpy_op
from tfdisguise.mechanisms.op import check_op

__all__ = ["Plan", "Uniform", "apply", "invert", "uniform_source"]

# uniform(shape, maxval) -> fresh float32 samples of U[0, maxval).
Uniform = Callable[[tuple, float], "keras.KerasTensor"]


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A spec compiled with its secret material into a short list of ops."""

    spec: object
    ops: tuple

    @classmethod
    def compile(cls, spec, step_ops: Iterable, *, owned: bool = False) -> Plan:
        """Checks each step's op against `spec` and fuses consecutive linear ones.

        `step_ops` may be a generator: each op is fused as it arrives, so a
        large step's unfused op is freed as soon as it is fused. `owned=True`
        says that the ops were built for this plan alone (as `Key.plan` does):
        fusing may then reorder their matrices in place rather than copy them.
        """
        fused: list = []
        for op in step_ops:
            check_op(op)
            if hasattr(op, "check"):
                op.check(spec)
            if op.linear and fused and fused[-1].linear and BlockLinear.fusable(fused[-1], op):
                fused[-1] = BlockLinear.compose(fused[-1], op, reuse_first=owned)
            else:
                fused.append(op)
        return cls(spec=spec, ops=tuple(fused))

    @property
    def has_noise(self) -> bool:
        """True when some op draws fresh randomness (so `apply` needs `uniform`)."""
        return any(op.stochastic for op in self.ops)

    @property
    def exact_inverse(self) -> bool:
        """True when `invert` undoes `apply` exactly (up to float error), not only in least squares."""
        return all(op.exact_inverse for op in self.ops)

    @property
    def runs_numpy(self) -> bool:
        """True when some op uses the numpy escape hatch (no XLA, no SavedModel; see `numpy_bridge`)."""
        return any(op.backend == "numpy" for op in self.ops)

    @property
    def linear(self) -> BlockLinear:
        """All linear ops composed, ignoring the others (what a known-plaintext attacker estimates).

        Meaningful when the spec is linear up to additive noise (`spec.is_linear`).
        In matrix mode its `matrices` are the bw x bw R_i in row form (`rows`
        set); `dense_matrices()` expands them to d x d for small specs.
        """
        out = BlockLinear()
        for op in self.ops:
            if op.linear:
                out = BlockLinear.compose(out, op)
        return out

    @functools.cached_property
    def inverse_ops(self) -> tuple:
        """Each op's `inverse()`, in reverse order: what `invert` runs. Built on first use, then kept."""
        return tuple(op.inverse() for op in reversed(self.ops))


def _in_layout(x, call, layout, spec, dtype):
    if layout == "blocks":
        return from_blocks(ops.cast(call(to_blocks(x, spec)), dtype), spec)
    return call(x)


def _run_op(x, op, spec, uniform, dtype, compile_fn):
    if op.backend == "numpy":
        call = lambda t: run_numpy_op(op, t, dtype)
    else:
        u = uniform if op.stochastic else None
        call = lambda t: op(t, u, dtype)
    fn = lambda t: _in_layout(t, call, op.layout, spec, dtype)
    # Only deterministic keras ops are compiled: XLA cannot run numpy, and the
    # noise is fastest with the plain RNG kernel outside the fused linear kernel.
    # An op may decline XLA (`jit`), as a large dense matmul does.
    if compile_fn is not None and op.backend == "keras" and not op.stochastic and getattr(op, "jit", True):
        fn = compile_fn(fn)
    return fn(x)


def _run(images, plan, op_list, uniform, dtype="float32", compile_fn=None):
    x = ops.convert_to_tensor(images)
    single = check_images(x, plan.spec)
    if keras.backend.standardize_dtype(x.dtype) not in ("uint8", "float32", "float64"):
        x = ops.cast(x, dtype)
    if single:
        x = ops.expand_dims(x, 0)
    # uint8 stays uint8 through the layout change and any leading permutation;
    # each op casts to `dtype` where arithmetic starts.
    for op in op_list:
        x = _run_op(x, op, plan.spec, uniform, dtype, compile_fn)
    y = ops.cast(x, dtype)
    return y[0] if single else y


def apply(images, plan: Plan, uniform: Uniform | None = None, compile_fn=None):
    """Disguises `images` ([H,W,C] or [N,H,W,C], uint8 or float) with `plan`.

    `uniform(shape, maxval)` must return fresh U[0, maxval) float32 samples; it
    is needed only when the plan adds noise. `compile_fn`, if given, wraps each
    deterministic keras op, in particular each fused linear op (for example
    `tf.function(..., jit_compile=True)`). Returns float32 of the input's shape.
    """
    return _run(images, plan, plan.ops, uniform, compile_fn=compile_fn)


def invert(disguised, plan: Plan):
    """Undoes `apply`: exactly when `plan.exact_inverse`, otherwise the least-squares estimate.

    Each op's `inverse()` runs in reverse order. For noise U[0, N] that inverse
    removes the mean N/2 at the point where the noise was added, while the linear
    ops are inverted exactly; what remains is the zero-mean part of the noise,
    passed through the inverse transforms.
    """
    # float64: the inverse of a poorly conditioned projection amplifies float32 error.
    return _run(disguised, plan, plan.inverse_ops, None, dtype="float64")


def uniform_source(seed_generator) -> Uniform:
    """A `uniform` callable backed by a `keras.random.SeedGenerator`."""

    def uniform(shape, maxval):
        return keras.random.uniform(shape, 0.0, maxval, dtype="float32", seed=seed_generator)

    return uniform
