"""Pure tensor functions that carry out a disguise: blocks, permutation, RMT, noise.

Everything here is written with `keras.ops`, so the same code runs on the
TensorFlow backend inside `tf.data` and as a model layer on any backend.

Consecutive linear steps (RMT, permutation) are fused at compile time into one
op. That op moves images into a *block layout* `[t, N, d]` (block position,
image, flattened block of length d = bh*bw*C), runs one gather plus one batched
matmul `[t, N, d] @ [t, d, d]`, and moves them back; under XLA (as in `wrap`) the
whole op is one fused kernel. Noise is i.i.d. per element, so it is added in image
layout between linear ops.

Example (noise-free round trip):

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((4, 4, 1), block_size=2, rmt="orthogonal", rmt_mode="vector")
>>> rng = np.random.default_rng(0)
>>> plan = Plan.compile(spec, [s.build(s.material(rng, spec), spec) for s in spec.steps])
>>> x = rng.uniform(0, 255, size=(3, 4, 4, 1)).astype("float32")
>>> y = keras.ops.convert_to_numpy(apply(x, plan))
>>> bool(np.allclose(keras.ops.convert_to_numpy(invert(y, plan)), x, atol=1e-3))
True
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "AddNoise",
    "BlockLinear",
    "Plan",
    "apply",
    "disguise",
    "expand_matrix_mode",
    "from_blocks",
    "invert",
    "to_blocks",
    "undisguise",
    "uniform_source",
]

# uniform(shape, maxval) -> fresh float32 samples of U[0, maxval).
Uniform = Callable[[tuple, float], "keras.KerasTensor"]


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


@dataclasses.dataclass(frozen=True, eq=False)
class BlockLinear:
    """out_block[j] = in_block[perm[j]] @ matrices[j]; either part may be None."""

    perm: np.ndarray | None
    matrices: np.ndarray | None

    def then(self, other: "BlockLinear") -> "BlockLinear":
        """This op followed by `other`, as one op."""
        p1, m1, p2, m2 = self.perm, self.matrices, other.perm, other.matrices
        if p2 is None:
            perm = p1
        else:
            perm = p2 if p1 is None else p1[p2]
            m1 = None if m1 is None else m1[p2]
        if m1 is None:
            matrices = m2
        elif m2 is None:
            matrices = m1
        else:
            matrices = m1 @ m2
        return BlockLinear(perm=perm, matrices=matrices)

    def inverse(self) -> "BlockLinear":
        # Invert in float64: projection matrices can be poorly conditioned.
        inv_m = None if self.matrices is None else np.linalg.inv(self.matrices.astype(np.float64))
        if self.perm is None:
            return BlockLinear(perm=None, matrices=inv_m)
        inv_p = np.argsort(self.perm).astype(np.int32)
        return BlockLinear(perm=inv_p, matrices=None if inv_m is None else inv_m[inv_p])

    @functools.cached_property
    def matrices_f32(self) -> np.ndarray | None:
        return None if self.matrices is None else self.matrices.astype(np.float32)

    def __call__(self, blocks, uniform=None, dtype="float32"):
        if self.perm is not None:
            # Before the cast when the input is uint8: moving 1-byte pixels is 4x cheaper.
            blocks = ops.take(blocks, self.perm, axis=0)
        if self.matrices is not None:
            blocks = ops.cast(blocks, dtype)
            blocks = ops.matmul(blocks, self.matrices if dtype == "float64" else self.matrices_f32)
        return blocks


@dataclasses.dataclass(frozen=True)
class AddNoise:
    """Adds U[0, level] noise, fresh at every call."""

    level: float

    def __call__(self, blocks, uniform=None, dtype="float32"):
        if self.level == 0:
            return blocks
        if uniform is None:
            raise ValueError("This disguise adds noise, so `uniform` (a source of U[0, maxval) samples) is required.")
        return ops.cast(blocks, dtype) + uniform(ops.shape(blocks), self.level)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A spec compiled with its secret material into a short list of ops."""

    spec: "object"
    ops: tuple

    @classmethod
    def compile(cls, spec, step_ops: Sequence) -> "Plan":
        fused: list = []
        for op in step_ops:
            if isinstance(op, BlockLinear) and fused and isinstance(fused[-1], BlockLinear):
                fused[-1] = fused[-1].then(op)
            else:
                fused.append(op)
        return cls(spec=spec, ops=tuple(fused))

    @property
    def has_noise(self) -> bool:
        return any(isinstance(op, AddNoise) and op.level > 0 for op in self.ops)

    @property
    def linear(self) -> BlockLinear:
        """All linear ops composed, ignoring noise (what a known-plaintext attacker estimates)."""
        out = BlockLinear(None, None)
        for op in self.ops:
            if isinstance(op, BlockLinear):
                out = out.then(op)
        return out


def to_blocks(x, spec):
    """[N, H, W, C] -> [t, N, d], blocks numbered row-major."""
    (h, w, c), (bh, bw), (gh, gw) = spec.image_shape, spec.block_size, spec.grid
    x = ops.reshape(x, (-1, gh, bh, gw, bw, c))
    x = ops.transpose(x, (1, 3, 0, 2, 4, 5))
    return ops.reshape(x, (gh * gw, -1, bh * bw * c))


def from_blocks(blocks, spec):
    """[t, N, d] -> [N, H, W, C]; the inverse of `to_blocks`."""
    (h, w, c), (bh, bw), (gh, gw) = spec.image_shape, spec.block_size, spec.grid
    x = ops.reshape(blocks, (gh, gw, -1, bh, bw, c))
    x = ops.transpose(x, (2, 0, 3, 1, 4, 5))
    return ops.reshape(x, (-1, h, w, c))


def _check_images(x, spec):
    shape = tuple(x.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"`images` must have rank 3 (H, W, C) or 4 (N, H, W, C) with (H, W, C) = "
            f"{spec.image_shape}. Received: shape={shape}"
        )
    got = shape[-3:]
    if got[2] is not None and got[2] != spec.image_shape[2]:
        raise ValueError(
            f"`images` have {got[2]} channels but the key's spec expects {spec.image_shape[2]} "
            f"(image shape {spec.image_shape}). Received: shape={shape}"
        )
    for axis, (g, e) in enumerate(zip(got[:2], spec.image_shape[:2])):
        if g is not None and g != e:
            raise ValueError(
                f"`images` must be {spec.image_shape[0]}x{spec.image_shape[1]} to match the key's "
                f"spec {spec.image_shape}. Received: shape={shape}"
            )
    return len(shape) == 3


def _linear_on_images(x, op: BlockLinear, spec, dtype):
    """One fused linear op on images: into block layout, gather + matmul, and back."""
    blocks = op(to_blocks(x, spec), None, dtype)
    return from_blocks(ops.cast(blocks, dtype), spec)


def _run(images, plan, op_list, uniform, dtype="float32", compile_fn=None):
    x = ops.convert_to_tensor(images)
    single = _check_images(x, plan.spec)
    if keras.backend.standardize_dtype(x.dtype) not in ("uint8", "float32", "float64"):
        x = ops.cast(x, dtype)
    if single:
        x = ops.expand_dims(x, 0)
    # uint8 stays uint8 through the layout change and any leading permutation;
    # each op casts to `dtype` where arithmetic starts. Noise is elementwise and
    # i.i.d., so it is added in image layout, outside the linear ops: that lets
    # `compile_fn` (XLA in `wrap`) fuse each linear op's layout changes, gather,
    # cast and matmul into one kernel, while the noise uses the fast RNG kernel.
    for op in op_list:
        if isinstance(op, BlockLinear):
            fn = functools.partial(_linear_on_images, op=op, spec=plan.spec, dtype=dtype)
            x = (compile_fn(fn) if compile_fn else fn)(x)
        else:
            x = op(x, uniform, dtype)
    y = ops.cast(x, dtype)
    return y[0] if single else y


def apply(images, plan: Plan, uniform: Uniform | None = None, compile_fn=None):
    """Disguises `images` ([H,W,C] or [N,H,W,C], uint8 or float) with `plan`.

    `uniform(shape, maxval)` must return fresh U[0, maxval) float32 samples; it
    is needed only when the plan adds noise. `compile_fn`, if given, wraps each
    fused linear op (for example `tf.function(..., jit_compile=True)`). Returns
    float32 of the input's shape.
    """
    return _run(images, plan, plan.ops, uniform, compile_fn=compile_fn)


class _MeanNoise:
    """Inverse of AddNoise in the least-squares sense: subtract the mean level/2."""

    def __init__(self, level):
        self.level = level

    def __call__(self, blocks, uniform=None, dtype="float32"):
        return ops.cast(blocks, dtype) - self.level / 2.0


def invert(disguised, plan: Plan):
    """Undoes `apply` for noise-free plans; with noise, the least-squares estimate.

    Noise is uniform on [0, N], so the estimate removes its mean N/2 at the point
    where it was added and inverts the linear ops exactly; what remains is the
    zero-mean part of the noise, passed through the inverse transforms.
    """
    inverse_ops = []
    for op in reversed(plan.ops):
        inverse_ops.append(op.inverse() if isinstance(op, BlockLinear) else _MeanNoise(op.level))
    # float64: the inverse of a poorly conditioned projection amplifies float32 error.
    return _run(disguised, plan, inverse_ops, None, dtype="float64")


def uniform_source(seed_generator) -> Uniform:
    """A `uniform` callable backed by a `keras.random.SeedGenerator`."""

    def uniform(shape, maxval):
        return keras.random.uniform(shape, 0.0, maxval, dtype="float32", seed=seed_generator)

    return uniform


def disguise(images, key):
    """Disguises `images` with `key`, eagerly, and returns a float32 numpy array.

    For data pipelines use `tfdisguise.wrap`; inside a model use the `Disguise`
    layer. Noise is fresh at every call, seeded from the OS's CSPRNG.
    """
    seed = keras.random.SeedGenerator(secrets.randbits(31)) if key.plan.has_noise else None
    return ops.convert_to_numpy(apply(images, key.plan, uniform_source(seed) if seed else None))


def undisguise(disguised, key):
    """The owner's inverse of `disguise`, as a float32 numpy array.

    Exact (up to float error) for noise-free pipelines: inverse permutation and
    the inverse of each R_i (its transpose when orthogonal). With noise it is the
    least-squares estimate: the noise mean N/2 is removed and the linear steps
    are inverted, so the zero-mean part of the noise remains in the result.
    """
    return ops.convert_to_numpy(invert(disguised, key.plan)).astype(np.float32)
