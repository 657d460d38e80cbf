"""The public description of a disguise: image shape, block size, ordered steps.

A spec is not secret. It says *what* is done (which mechanisms, in which order,
with which public parameters); only the key's secret says *with which* matrices
and permutation. Specs travel with disguised shards and exported models so that a
client can check that its key matches.

The steps are registered classes (`register_step`): the built-in `RMT`,
`Permute` and `Noise` live with their ops in `tfdisguise.mechanisms`, and a
user's own step module works the same way.

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

__all__ = [
    "DEFAULT_MAX_PLAN_BYTES",
    "Cost",
    "Noise",
    "Permute",
    "PlanTooLargeError",
    "RMT",
    "Spec",
    "Step",
    "register_step",
    "registered_steps",
    "step_from_dict",
]

_STEPS: dict[str, type[Step]] = {}

# `Spec.create` refuses a spec whose plan would need more memory than this (see `Spec.cost`).
DEFAULT_MAX_PLAN_BYTES = 2 * 10**9


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: registers a `Step` subclass under its `name`.

    A step defined in the user's own module then works everywhere a spec goes:
    spec JSON, key files, `wrap`, the `Disguise` layer, `undisguise`, shards and
    exports (import the module before loading a spec or key that names it). Put
    it above `@dataclasses.dataclass(frozen=True)`.

    Example: the keyed negative-positive transform of Kiya et al. (each block is
    either kept or replaced by 255 - block), an affine block op that fuses with
    RMT and permutation.

    >>> import dataclasses, numpy as np
    >>> from typing import ClassVar
    >>> from tfdisguise.mechanisms import BlockLinear, disguise, undisguise
    >>> from tfdisguise.key import Key
    >>> @register_step
    ... @dataclasses.dataclass(frozen=True)
    ... class NegPosExample(Step):
    ...     name: ClassVar[str] = "negpos_example"
    ...     def material(self, rng, spec):
    ...         return rng.integers(0, 2, spec.num_blocks).astype(bool)
    ...     def build(self, flip, spec):
    ...         sign = np.where(flip, -1.0, 1.0)[:, None] * np.ones(spec.block_dim)
    ...         return BlockLinear(matrices=sign[:, :, None] * np.eye(spec.block_dim), bias=255.0 * (sign < 0))
    >>> spec = Spec((4, 4, 1), 2, steps=[{"name": "negpos_example"}, {"name": "permute"}])
    >>> key = Key.generate(spec)
    >>> len(key.plan.ops)  # fused with the permutation
    1
    >>> x = np.arange(16, dtype="uint8").reshape(1, 4, 4, 1)
    >>> bool(np.allclose(undisguise(disguise(x, key), key), x, atol=1e-4))
    True
    """
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise TypeError(f"`register_step` registers subclasses of tfdisguise.spec.Step. Received: {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(
            "A step class must set `name: ClassVar[str]` to a non-empty string. "
            f"Received: {cls.__qualname__}.name={name!r}"
        )
    if "__dataclass_fields__" not in vars(cls):
        raise TypeError(
            f"Step class {cls.__qualname__} must be a frozen dataclass: put @register_step above "
            "@dataclasses.dataclass(frozen=True)."
        )
    existing = _STEPS.get(name)
    # The same class defined again (a re-run notebook cell, a reloaded module) replaces itself.
    if existing is not None and _qualified(existing) != _qualified(cls):
        raise ValueError(
            f"Step name {name!r} is already registered by {_qualified(existing)}. Received: {_qualified(cls)}"
        )
    _STEPS[name] = cls
    return cls


def _qualified(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_steps() -> dict[str, type[Step]]:
    """The registered step classes by name (a copy)."""
    return dict(_STEPS)


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage of a disguise pipeline: its public parameters and what it declares.

    A new mechanism (block AES, pixel shuffle, ...) is one new module holding a
    subclass registered with `register_step` and the op it builds (see
    `tfdisguise.mechanisms.op`); the pipeline code does not change. The
    dataclass fields are the public parameters that travel in the spec JSON.

    A subclass declares (class attributes):
        name: the registered name, as written in spec JSON and key files.
        keyed: whether it draws secret material from the key (default True).
        linear: whether it is affine in the image up to additive noise, which
            is what attacks ask through `Spec.is_linear` (default True).
        adds_noise: whether it adds fresh noise at every call; such a step
            reports its public level in the `noise_level` property.
    and overrides:
        material(rng, spec): its secret material, drawn from `rng` (a numpy
            Generator derived from the key for this step; None when not `keyed`).
        build(material, spec): the op that carries out the step. An op that
            cannot be written in `keras.ops` (a block cipher) declares
            `backend = "numpy"`; see `tfdisguise.mechanisms.numpy_bridge`.
        reference(image, material, spec, rng): optional, an independent
            per-image numpy implementation that tests compare against.
        cost(spec): optional, the step's plan memory and FLOPs per image
            (`tfdisguise.mechanisms.cost.Cost`), so that `Spec.create` can
            refuse a spec too large to build before anything is allocated.
        plan_material(rng, spec): optional, the material in a leaner form that
            `build` accepts (RMT: float32); by default `material(rng, spec)`.
        validate(spec): optional, raises ValueError for a geometry it cannot run on.
        describe(): optional; the default lists the parameters in field order.
    See `register_step` for a complete example.
    """

    name: ClassVar[str] = ""
    # Steps that need secret material get their own HMAC-derived generator.
    keyed: ClassVar[bool] = True
    # True when the step is affine in the image (up to additive noise): what a
    # linear (known-plaintext) attacker can model exactly.
    linear: ClassVar[bool] = True
    # True for steps that add fresh random noise at every call (level: `noise_level`).
    adds_noise: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def describe(self) -> str:
        """Short text for logs and reports, e.g. 'rmt(orthogonal,matrix)'; params in field order."""
        params = [f"{v:g}" if isinstance(v, float) else str(v) for v in dataclasses.astuple(self)]
        return f"{self.name}({','.join(params)})" if params else self.name

    @property
    def noise_level(self) -> float:
        """The public level of the fresh noise this step adds, on the 0..255 scale (0 for most steps)."""
        return 0.0

    def validate(self, spec: Spec) -> None:
        """Raises ValueError when the step cannot run on `spec`'s geometry."""

    def material(self, rng: np.random.Generator | None, spec: Spec):
        """The step's secret material, drawn from `rng` (None for unkeyed steps)."""
        return None

    def plan_material(self, rng: np.random.Generator | None, spec: Spec):
        """The material as the plan needs it: `material(rng, spec)` unless a step saves memory here."""
        return self.material(rng, spec)

    def cost(self, spec: Spec) -> Cost:
        """This step's plan memory and work per image on `spec` (nothing, unless a step says)."""
        return Cost()

    def build(self, material, spec: Spec):
        """Returns the op (see `tfdisguise.mechanisms.op`) that carries out this step with `material`."""
        raise NotImplementedError(f"Step {self.name!r} must implement build(material, spec).")

    def reference(self, image: np.ndarray, material, spec: Spec, rng: np.random.Generator | None) -> np.ndarray:
        """This step on one float64 image [H, W, C], written plainly in numpy, for tests."""
        raise NotImplementedError(f"Step {self.name!r} has no per-image numpy reference.")


def step_from_dict(d: dict[str, Any]) -> Step:
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(f"A step must be a dict with a 'name'. Received: {d!r}")
    params = dict(d)
    name = params.pop("name")
    if name not in _STEPS:
        raise ValueError(
            f"Unknown step {name!r}; known steps: {sorted(_STEPS)}. A step defined in your own module is "
            "known once that module (with its @register_step class) has been imported."
        )
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
            raise ValueError(
                f"`image_shape` must be three positive ints (H, W, C). Received: image_shape={self.image_shape!r}"
            )
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
        aes: bool = False,
        scramble: str | None = None,
        negpos_hash: bool = False,
        max_plan_bytes: int | None = DEFAULT_MAX_PLAN_BYTES,
    ) -> Spec:
        """The usual pipeline: RMT, then permutation, then noise.

        `block_size=None` means one block covering the whole image (whole-image
        RMT). `rmt=None` (or "none") leaves RMT out. `noise_position="before"`
        adds the noise before the transforms, as in the arXiv paper.

        Further mechanisms, each off by default: `scramble` ("shared" or
        "per_position") adds Kiya-style block scrambling, `negpos_hash=True` the
        hashed negative-positive step, `aes=True` block-wise AES. The full order is
        noise (before) > block_scramble > negpos_hash > aes > rmt > permute > noise (after).

        A spec whose plan would need more than `max_plan_bytes` (2 GB by default;
        None for no cap) is refused here, before anything is allocated, with a
        `PlanTooLargeError` that names the memory needed and the block sizes
        that fit (see `cost`):

        >>> try:
        ...     Spec.create((224, 224, 3), rmt_mode="vector")  # whole-image vector RMT: d = 150528
        ... except PlanTooLargeError as e:
        ...     print(str(e).split(". ")[1])
        Block sizes that fit this image and these steps: 16, 14, 8, 7, 4, 2
        """
        image_shape = tuple(image_shape)
        if block_size is None:
            block_size = image_shape[:2]
        if noise_position not in ("after", "before"):
            raise ValueError(
                f"`noise_position` must be 'after' or 'before'. Received: noise_position={noise_position!r}"
            )
        steps: list[Step] = []
        if scramble not in (None, "none"):
            steps.append(BlockScramble.variant(scramble))
        if negpos_hash:
            steps.append(NegPosHash())
        if aes:
            steps.append(AES())
        if rmt not in (None, "none"):
            steps.append(RMT(kind=rmt, mode=rmt_mode))
        # A permutation of one block does nothing; leave it out rather than pretend.
        if permute and (image_shape[0] // _as_pair(block_size, "block_size")[0]) * (
                image_shape[1] // _as_pair(block_size, "block_size")[1]) > 1:
            steps.append(Permute())
        if noise:
            noise_step = Noise(level=noise)
            steps.insert(0, noise_step) if noise_position == "before" else steps.append(noise_step)
        spec = cls(image_shape=image_shape, block_size=block_size, steps=tuple(steps))
        check_plan_size(spec, max_plan_bytes)
        return spec

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
        return sum(s.noise_level for s in self.steps if s.adds_noise)

    def steps_of(self, step_type) -> tuple[Step, ...]:
        """The steps of `step_type` (a Step class or a registered name), in order."""
        if isinstance(step_type, str):
            return tuple(s for s in self.steps if s.name == step_type)
        return tuple(s for s in self.steps if isinstance(s, step_type))

    def has(self, step_type) -> bool:
        """True if any step is of `step_type` (a Step class or a registered name)."""
        return bool(self.steps_of(step_type))

    def cost(self) -> Cost:
        """Plan memory and FLOPs per image of this spec, from the spec alone (see `mechanisms.cost`).

        >>> Spec.create((32, 32, 3), 4, rmt_mode="vector").cost().matrix_bytes  # 64 blocks of 48x48 float32
        589824
        """
        total = Cost()
        for step in self.steps:
            total = total + step.cost(self)
        return total

    @property
    def is_linear(self) -> bool:
        """True when the disguise is affine in the image up to additive noise."""
        return all(s.linear for s in self.steps)

    @property
    def is_noise_free(self) -> bool:
        return self.noise_level == 0

    def without_noise(self) -> Spec:
        """The same geometry and steps, noise steps left out."""
        return dataclasses.replace(self, steps=tuple(s for s in self.steps if not s.adds_noise))

    @classmethod
    def recommended(cls, image_shape, **overrides) -> Spec:
        """The setting `tfdisguise keygen` writes when given only an image shape.

        Block scrambling drawn per block position (ELE-like) plus the block
        permutation, and fresh noise after them: block 7, noise 100 for 28x28
        images; block 4, noise 25 for 32x32 and anything else (block 4 where it
        divides the image, otherwise the largest divisor up to 8). Why: no
        setting a model learns resists a level-1 attacker (docs/RESULTS.md
        section 7), so the default is the one the models learn best and that
        needs the most leaked pairs at level 2. `overrides` are `Spec.create`
        arguments; naming any mechanism (`rmt`, `scramble`, `aes`,
        `negpos_hash`) replaces the recommended one, with RMT as the base as in
        `Spec.create`, so `rmt="orthogonal"` gives the paper's setting.

        >>> Spec.recommended((28, 28, 1)).describe()
        'block 7x7: block_scramble(per-position) > permute > noise(100)'
        >>> Spec.recommended((32, 32, 3)).describe()
        'block 4x4: block_scramble(per-position) > permute > noise(25)'
        >>> Spec.recommended((28, 28, 1), rmt="orthogonal").describe()
        'block 7x7: rmt(orthogonal,matrix) > permute > noise(100)'
        """
        h, w = int(image_shape[0]), int(image_shape[1])
        if (h, w) == (28, 28):
            block, noise = 7, 100.0
        else:
            fits = [b for b in range(1, 9) if h % b == 0 and w % b == 0]
            block, noise = (4 if 4 in fits else max(fits)), 25.0
        kwargs = {"block_size": block, "permute": True, "noise": noise}
        if not {"rmt", "scramble", "aes", "negpos_hash"} & set(overrides):
            kwargs.update(rmt=None, scramble="per_position")  # otherwise Spec.create's own base: orthogonal RMT
        kwargs.update(overrides)
        return cls.create(image_shape, **kwargs)

    def plain(self) -> Spec:
        """The same geometry with no steps (the identity disguise)."""
        return dataclasses.replace(self, steps=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "block_size": list(self.block_size),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
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


# What a spec costs, checked by `Spec.create`; it needs nothing from this module.
# The built-in steps live with their ops in `tfdisguise.mechanisms`; they subclass
# `Step`, so they are imported here, after it is defined. Importing them keeps
# `from tfdisguise.spec import RMT` working and registers them before any spec is read.
from tfdisguise.mechanisms.aes import AES  # noqa: E402
from tfdisguise.mechanisms.cost import Cost, PlanTooLargeError, check_plan_size  # noqa: E402
from tfdisguise.mechanisms.negpos_hash import NegPosHash  # noqa: E402
from tfdisguise.mechanisms.noise import Noise  # noqa: E402
from tfdisguise.mechanisms.permute import Permute  # noqa: E402
from tfdisguise.mechanisms.rmt import RMT  # noqa: E402
from tfdisguise.mechanisms.scramble import BlockScramble  # noqa: E402
