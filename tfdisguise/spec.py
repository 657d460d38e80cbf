"""The public description of a disguise: image shape, block size, ordered steps.

A spec is not secret. It says *what* is done (which mechanisms, in which order,
with which public parameters); only the key's secret says *with which* matrices
and permutation. Specs travel with disguised shards and exported models so that a
client can check that its key matches.

Example:

>>> spec = Spec.create((28, 28, 1), block_size=7, rmt="orthogonal", noise=100)
>>> spec.num_blocks, spec.block_dim
(16, 49)
>>> [step.name for step in spec.steps]
['rmt', 'permute', 'noise']
>>> Spec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

__all__ = ["Spec", "Step", "RMT", "Permute", "Noise", "step_from_dict"]

_STEPS: dict[str, type["Step"]] = {}


def _register(cls):
    _STEPS[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage of a disguise pipeline.

    A new mechanism (block AES, pixel shuffle, ...) is a new subclass registered
    here plus the op it compiles to in `mechanisms`; the pipeline code does not
    change.
    """

    name: ClassVar[str] = ""
    # Steps that need secret material get their own HMAC-derived generator.
    keyed: ClassVar[bool] = True
    # True when the step is affine in the image (up to additive noise): what a
    # linear (known-plaintext) attacker can model exactly.
    linear: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def describe(self) -> str:
        """Short text for logs and reports, e.g. 'rmt(orthogonal,matrix)'; params in field order."""
        params = [f"{v:g}" if isinstance(v, float) else str(v) for v in dataclasses.astuple(self)]
        return f"{self.name}({','.join(params)})" if params else self.name

    def validate(self, spec: "Spec") -> None:
        """Raises ValueError when the step cannot run on `spec`'s geometry."""

    def material(self, rng: np.random.Generator | None, spec: "Spec"):
        """The step's secret material, drawn from `rng` (None for unkeyed steps)."""
        return None

    def build(self, material, spec: "Spec"):
        """Returns the `mechanisms` op that carries out this step with `material`."""
        raise NotImplementedError


@_register
@dataclasses.dataclass(frozen=True)
class Permute(Step):
    """Keyed permutation of block positions: output block j is input block pi(j)."""

    name: ClassVar[str] = "permute"

    def material(self, rng, spec):
        return rng.permutation(spec.num_blocks).astype(np.int32)

    def build(self, material, spec):
        from tfdisguise import mechanisms

        return mechanisms.BlockLinear(perm=material, matrices=None)


@_register
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
            raise ValueError(
                f"`kind` must be one of {self.KINDS}. Received: kind={self.kind!r}"
            )
        if self.mode not in self.MODES:
            raise ValueError(
                f"`mode` must be one of {self.MODES}. Received: mode={self.mode!r}"
            )

    def matrix_size(self, spec: "Spec") -> int:
        return spec.block_size[1] if self.mode == "matrix" else spec.block_dim

    def material(self, rng, spec):
        """[t, n, n] float64: R_i for each block position i (n = bw or d)."""
        n = self.matrix_size(spec)
        return np.stack([_random_matrix(rng, n, self.kind) for _ in range(spec.num_blocks)])

    def build(self, material, spec):
        from tfdisguise import mechanisms

        if self.mode == "matrix":
            material = mechanisms.expand_matrix_mode(material, spec.block_size[0], spec.image_shape[2])
        return mechanisms.BlockLinear(perm=None, matrices=material)


@_register
@dataclasses.dataclass(frozen=True)
class Noise(Step):
    """Fresh uniform noise U[0, level] per element, on the 0..255 scale."""

    name: ClassVar[str] = "noise"
    keyed: ClassVar[bool] = False
    level: float = 0.0

    def __post_init__(self):
        level = float(self.level)
        if not np.isfinite(level) or level < 0:
            raise ValueError(f"`level` must be a finite number >= 0. Received: level={self.level!r}")
        object.__setattr__(self, "level", level)

    def build(self, material, spec):
        from tfdisguise import mechanisms

        return mechanisms.AddNoise(level=self.level)


def _random_matrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    g = rng.standard_normal((n, n))
    if kind == "projection":
        return g / np.sqrt(n)
    # Haar measure needs the sign fix: plain QR output is biased.
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))[np.newaxis, :]


def step_from_dict(d: dict[str, Any]) -> Step:
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(f"A step must be a dict with a 'name'. Received: {d!r}")
    params = dict(d)
    name = params.pop("name")
    if name not in _STEPS:
        raise ValueError(f"Unknown step {name!r}; known steps: {sorted(_STEPS)}.")
    try:
        return _STEPS[name](**params)
    except TypeError as e:
        raise ValueError(f"Bad parameters for step {name!r}: {params!r} ({e})") from None


def _as_pair(value, argname) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{argname}` must be an int or a pair of ints. Received: {argname}={value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"`{argname}` must be one or two positive ints. Received: {argname}={value!r}")
    return pair


@dataclasses.dataclass(frozen=True)
class Spec:
    """Image geometry plus the ordered pipeline of steps.

    Args:
        image_shape: (H, W, C).
        block_size: (bh, bw); must divide H and W exactly (no padding is done).
        steps: ordered tuple of `Step`s.
    """

    image_shape: tuple[int, int, int]
    block_size: tuple[int, int]
    steps: tuple[Step, ...]

    def __post_init__(self):
        try:
            shape = tuple(int(v) for v in self.image_shape)
        except (TypeError, ValueError):
            raise ValueError(f"`image_shape` must be (H, W, C). Received: image_shape={self.image_shape!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"`image_shape` must be three positive ints (H, W, C). Received: image_shape={self.image_shape!r}")
        block = _as_pair(self.block_size, "block_size")
        if shape[0] % block[0] or shape[1] % block[1]:
            raise ValueError(
                f"`block_size` {block} must divide the image shape {shape}. "
                f"Received: block_size={block}"
            )
        steps = tuple(s if isinstance(s, Step) else step_from_dict(s) for s in self.steps)
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "block_size", block)
        object.__setattr__(self, "steps", steps)
        for step in steps:
            step.validate(self)

    @classmethod
    def create(
        cls,
        image_shape,
        block_size=None,
        *,
        rmt: str | None = "orthogonal",
        rmt_mode: str = "matrix",
        permute: bool = True,
        noise: float = 0.0,
        noise_position: str = "after",
    ) -> "Spec":
        """The usual pipeline: RMT, then permutation, then noise.

        `block_size=None` means one block covering the whole image (whole-image
        RMT). `rmt=None` (or "none") leaves RMT out. `noise_position="before"`
        adds the noise before the transforms, as in the arXiv paper.
        """
        image_shape = tuple(image_shape)
        if block_size is None:
            block_size = image_shape[:2]
        if noise_position not in ("after", "before"):
            raise ValueError(f"`noise_position` must be 'after' or 'before'. Received: noise_position={noise_position!r}")
        steps: list[Step] = []
        if rmt not in (None, "none"):
            steps.append(RMT(kind=rmt, mode=rmt_mode))
        if permute:
            steps.append(Permute())
        if noise:
            noise_step = Noise(level=noise)
            steps.insert(0, noise_step) if noise_position == "before" else steps.append(noise_step)
        return cls(image_shape=image_shape, block_size=block_size, steps=tuple(steps))

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_shape[0] // self.block_size[0], self.image_shape[1] // self.block_size[1])

    @property
    def num_blocks(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def block_dim(self) -> int:
        return self.block_size[0] * self.block_size[1] * self.image_shape[2]

    @property
    def noise_level(self) -> float:
        """Total noise level of the pipeline's noise steps (0 when noise-free)."""
        return sum(s.level for s in self.steps_of(Noise))

    def steps_of(self, step_type) -> tuple[Step, ...]:
        """The steps of `step_type` (a Step class or a registered name), in order."""
        if isinstance(step_type, str):
            return tuple(s for s in self.steps if s.name == step_type)
        return tuple(s for s in self.steps if isinstance(s, step_type))

    def has(self, step_type) -> bool:
        """True if any step is of `step_type` (a Step class or a registered name)."""
        return bool(self.steps_of(step_type))

    @property
    def is_linear(self) -> bool:
        """True when the disguise is affine in the image up to additive noise."""
        return all(s.linear for s in self.steps)

    @property
    def is_noise_free(self) -> bool:
        return self.noise_level == 0

    def without_noise(self) -> "Spec":
        """The same geometry and steps, noise steps left out."""
        return dataclasses.replace(self, steps=tuple(s for s in self.steps if not isinstance(s, Noise)))

    def plain(self) -> "Spec":
        """The same geometry with no steps (the identity disguise)."""
        return dataclasses.replace(self, steps=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "block_size": list(self.block_size),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        if not isinstance(d, dict):
            raise ValueError(f"A spec must be a dict. Received: {d!r}")
        missing = {"image_shape", "block_size", "steps"} - set(d)
        if missing:
            raise ValueError(f"Spec is missing {sorted(missing)}. Received: {d!r}")
        return cls(image_shape=d["image_shape"], block_size=d["block_size"], steps=d["steps"])

    def describe(self) -> str:
        """One line for logs and reports, e.g. 'block 7x7: rmt(orthogonal,matrix) > permute > noise(100)'."""
        parts = [s.describe() for s in self.steps]
        return f"block {self.block_size[0]}x{self.block_size[1]}: " + " > ".join(parts or ["identity"])
