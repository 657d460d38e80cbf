"""The op protocol: what every compiled step declares about itself.

A `Step` (see `tfdisguise.spec`) builds one op from its secret material. The
plan runs ops only through what they declare here, never by their type, so a
new mechanism is a new step module and nothing else:

- `layout`: "image" (the op sees `[N, H, W, C]`) or "blocks" (it sees `[t, N, d]`,
  see `layout.py`); the plan moves the data into that layout and back.
- `__call__(x, uniform, dtype)`: applies the op to `x` in its layout. `uniform`
  (shape, maxval) -> fresh U[0, maxval) samples is passed only to `stochastic`
  ops. Arithmetic is done in `dtype` ("float32" forward, "float64" when
  inverting); uint8 input may stay uint8 until arithmetic starts.
- `inverse()`: the op that undoes this one; `exact_inverse` says whether that is
  exact (up to float error) or only a least-squares estimate (noise).
- `linear`: True for an affine map on blocks, out[j] = in[perm[j]] @ matrices[j]
  + bias[j]. Such an op exposes `perm`, `matrices` and `bias` (any may be None)
  and the plan fuses it with its linear neighbours into one `BlockLinear`.
- `stochastic`: True when the op draws fresh randomness at every call. Such an op
  is never handed to `compile_fn` (XLA), so the noise keeps the fast RNG kernel.
- `jit` (optional, default True): whether the plan's `compile_fn` (XLA inside
  `wrap`) should compile the op. XLA fuses layout changes, gathers and casts
  into one pass, but on CPU its batched matmul is slower than TensorFlow's own
  for large matrices, so a large dense `BlockLinear` says False.
- `backend`: "keras" (written with `keras.ops`: runs on every backend, in
  `tf.data` and under XLA) or "numpy" (the escape hatch for mechanisms that
  `keras.ops` cannot express, such as a block cipher; see `numpy_bridge.py`).
  A numpy op's `__call__` receives and returns numpy arrays of the same shape.

Example: an op that scales images by a constant, in image layout.

>>> import dataclasses, keras, numpy as np
>>> @dataclasses.dataclass(frozen=True)
... class Scale(Op):
...     factor: float
...     def __call__(self, x, uniform=None, dtype="float32"):
...         return keras.ops.cast(x, dtype) * self.factor
...     def inverse(self):
...         return Scale(1.0 / self.factor)
>>> op = Scale(2.0)
>>> check_op(op)
>>> keras.ops.convert_to_numpy(op.inverse()(op(np.ones((1, 2, 2, 1)))))[0, :, :, 0].tolist()
[[1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

from typing import ClassVar

from tfdisguise.mechanisms.layout import LAYOUTS

__all__ = ["BACKENDS", "Op", "check_op"]

BACKENDS = ("keras", "numpy")


class Op:
    """Base class of the ops a `Step` builds; subclasses override what differs.

    The defaults describe a deterministic, exactly invertible `keras.ops` op in
    image layout. `__repr__` names the type only: ops hold key material.
    """

    layout: ClassVar[str] = "image"
    backend: ClassVar[str] = "keras"
    linear: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    jit: ClassVar[bool] = True
    exact_inverse: ClassVar[bool] = True

    def __call__(self, x, uniform=None, dtype="float32"):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x, uniform, dtype).")

    def inverse(self) -> Op:
        raise NotImplementedError(
            f"{type(self).__name__} declares no inverse, so a disguise that uses it cannot be undone."
        )

    def check(self, spec) -> None:
        """Raises ValueError when the op cannot run on `spec`'s geometry (called by `Plan.compile`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout!r}, backend={self.backend!r})"


def check_op(op) -> None:
    """Raises TypeError/ValueError when `op` does not declare the protocol correctly."""
    name = type(op).__name__
    if not callable(op) or not hasattr(op, "inverse"):
        raise TypeError(f"A step must build an op with __call__(x, uniform, dtype) and inverse(). Received: {name}")
    missing = [a for a in ("layout", "backend", "linear", "stochastic", "exact_inverse") if not hasattr(op, a)]
    if missing:
        raise TypeError(
            f"Op {name} must declare {missing}; subclass tfdisguise.mechanisms.Op for the defaults."
        )
    layout = getattr(op, "layout", None)
    if layout not in LAYOUTS:
        raise ValueError(f"Op {name} must declare `layout` as one of {LAYOUTS}. Received: layout={layout!r}")
    backend = getattr(op, "backend", None)
    if backend not in BACKENDS:
        raise ValueError(f"Op {name} must declare `backend` as one of {BACKENDS}. Received: backend={backend!r}")
    if getattr(op, "linear", False):
        if layout != "blocks" or backend != "keras":
            raise ValueError(
                f"Op {name} declares `linear`, so it must be an affine block op with layout='blocks' and "
                f"backend='keras'. Received: layout={layout!r}, backend={backend!r}"
            )
        missing = [a for a in ("perm", "matrices", "bias") if not hasattr(op, a)]
        if missing:
            raise ValueError(f"Op {name} declares `linear` but has no {missing} (use None for an absent part).")
    if backend == "numpy" and getattr(op, "stochastic", False):
        raise ValueError(
            f"Op {name} is stochastic and runs in numpy: fresh noise must come from a separate keras step "
            "(the numpy escape hatch gets no `uniform` source)."
        )
