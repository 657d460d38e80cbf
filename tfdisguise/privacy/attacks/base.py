"""One interface for every attack: `AttackInput` in, `AttackResult` out, a registry between them.

In the style of tensorflow/privacy's membership-inference toolkit: the attacker's
view and the scoring material travel in one validated dataclass, each attack is a
function registered under a name and a threat level, and `run_attacks` runs a
selection of them.

- Level 1: the attacker knows the public spec and holds public plain images of the
  same kind, never a pair. The registry hides the leaked pairs from level-1 attacks.
- Level 2: it also holds a few leaked (plain, disguised) pairs.

Success is measured as in the authors' 2021 paper: the examiner's accuracy on what
the attack recovers over its accuracy on the originals, clipped to [0, 1]. An attack
that only classifies uses its own accuracy over the examiner's accuracy on the
originals.

Example (a toy level-1 attack that guesses the most common public label):

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> @register_attack("doc_majority", level=1)
... def majority(inp):
...     guess = np.bincount(inp.public_labels).argmax()
...     acc = float(np.mean(inp.victim_labels == guess))
...     return AttackResult(success=acc, details={"guess": int(guess)})
>>> inp = AttackInput(spec=Spec.create((4, 4, 1), 2), num_classes=2,
...                   victim_disguised=np.zeros((4, 4, 4, 1)), victim_labels=np.array([1, 1, 1, 0]),
...                   public_plain=np.zeros((3, 4, 4, 1)), public_labels=np.array([1, 0, 1]))
>>> result = run_attacks(inp, ["doc_majority"])["doc_majority"]
>>> result.name, result.level, result.success, result.headline()
('doc_majority', 1, 0.75, {'doc_majority success': 0.75})
>>> result.to_dict()["details"]
{'guess': 1}
>>> _ = ATTACKS.pop("doc_majority")  # leave the registry as it was
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tfdisguise.privacy.metrics import accuracy, attack_success
from tfdisguise.privacy.result import Result, json_safe
from tfdisguise.spec import Permute, Spec

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInput",
    "AttackResult",
    "attack_names",
    "examiner_reference",
    "register_attack",
    "relative_success",
    "run_attacks",
    "true_permutation",
]

NO_JSON = {"json": False}


@dataclasses.dataclass(kw_only=True)
class AttackInput:
    """What the attacker holds, plus what its result is scored against.

    Attacker's view:
        spec: the public spec of the victim's disguise.
        victim_disguised: [N, H, W, C] the victim's disguised images.
        public_plain, public_labels: [M, H, W, C] plain images of the same kind, and
            their labels (level 1 and up).
        leaked_plain, leaked_disguised: [K, H, W, C] leaked pairs (level 2 only).
        num_classes: the number of classes (public knowledge of the task).
        train_config: a `tfdisguise.train.TrainConfig` for attacks that train a
            model (None: their own default).
        seed: for attacks that draw random numbers.

    Scoring only (an attack must not use them to attack):
        victim_labels: [N] the victim's true labels.
        victim_plain: [N, H, W, C] the victim's plain originals.
        examiner: a Keras model trained on plain images; it judges what an attack
            recovers.
        true_perm: the key's block permutation, to score an attack's estimate of it.

    setting: a name for logs and results.
    """

    spec: Spec
    victim_disguised: Any
    victim_labels: Any
    num_classes: int
    victim_plain: Any = None
    public_plain: Any = None
    public_labels: Any = None
    leaked_plain: Any = None
    leaked_disguised: Any = None
    examiner: Any = None
    true_perm: Any = None
    train_config: Any = None
    seed: int = 0
    setting: str = ""

    def validate(self) -> None:
        """Raises ValueError, naming the field, when the input is inconsistent."""
        if not isinstance(self.spec, Spec):
            raise ValueError(f"`AttackInput.spec` must be a tfdisguise Spec. Received: {type(self.spec).__name__}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) \
                or self.num_classes < 2:
            raise ValueError(f"`AttackInput.num_classes` must be an int >= 2. Received: {self.num_classes!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"`AttackInput.seed` must be an int. Received: {self.seed!r}")
        n = self._check_images("victim_disguised", self.victim_disguised)
        self._check_labels("victim_labels", self.victim_labels, n)
        if self.victim_plain is not None:
            self._check_images("victim_plain", self.victim_plain, n)
        self._check_together("public_plain", "public_labels")
        if self.public_plain is not None:
            m = self._check_images("public_plain", self.public_plain)
            self._check_labels("public_labels", self.public_labels, m)
        self._check_together("leaked_plain", "leaked_disguised")
        if self.leaked_plain is not None:
            k = self._check_images("leaked_plain", self.leaked_plain)
            self._check_images("leaked_disguised", self.leaked_disguised, k)
        if self.examiner is not None and not callable(getattr(self.examiner, "predict", None)):
            raise ValueError("`AttackInput.examiner` must be a Keras model (with `predict`). "
                             f"Received: {type(self.examiner).__name__}")
        if self.true_perm is not None:
            perm = np.asarray(self.true_perm)
            if perm.shape != (self.spec.num_blocks,) or sorted(perm.tolist()) != list(range(self.spec.num_blocks)):
                raise ValueError(f"`AttackInput.true_perm` must be a permutation of the spec's "
                                 f"{self.spec.num_blocks} block positions. Received: {perm.tolist()}")

    def require(self, attack: str, *fields: str) -> None:
        """Raises ValueError when any of `fields` is None: `attack` cannot run without them."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"Attack {attack!r} needs AttackInput fields {missing}, which are None.")

    def _check_images(self, field: str, images, n: int | None = None) -> int:
        shape = np.shape(images)
        if len(shape) != 4 or tuple(shape[1:]) != self.spec.image_shape or shape[0] < 1:
            raise ValueError(f"`AttackInput.{field}` must be [N, H, W, C] images of the spec's shape "
                             f"{self.spec.image_shape}, with N >= 1. Received: shape {tuple(shape)}")
        if n is not None and shape[0] != n:
            raise ValueError(f"`AttackInput.{field}` must hold {n} images, one per image it goes with. "
                             f"Received: {shape[0]}")
        return shape[0]

    def _check_labels(self, field: str, labels, n: int) -> None:
        y = np.asarray(labels)
        if y.reshape(-1).shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"`AttackInput.{field}` must hold {n} integer labels, one per image. "
                             f"Received: shape {y.shape}, dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"`AttackInput.{field}` must lie in [0, num_classes={self.num_classes}). "
                             f"Received: labels from {y.min()} to {y.max()}")

    def _check_together(self, a: str, b: str) -> None:
        if (getattr(self, a) is None) != (getattr(self, b) is None):
            given, missing = (a, b) if getattr(self, b) is None else (b, a)
            raise ValueError(f"`AttackInput.{given}` needs `AttackInput.{missing}` beside it. "
                             f"Received: {missing}=None")


@dataclasses.dataclass(kw_only=True)
class AttackResult(Result):
    """What an attack achieved.

    Args:
        success: in [0, 1]; 1 means the attack recovers everything the examiner
            recognizes in the originals.
        name, level: filled in by the registry when left empty.
        setting: the calibration setting it ran on.
        details: more JSON-safe numbers, written with the result.
        samples: images for pictures (never written to JSON), e.g. "original",
            "disguised" and the attack's reconstructions.
    """

    name: str = ""
    level: int = 0
    success: float
    setting: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    samples: dict = dataclasses.field(default_factory=dict, metadata=NO_JSON, repr=False)

    def __post_init__(self):
        value = float(self.success)
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"`success` must be in [0, 1]. Received: success={self.success!r}")
        self.success = value

    def headline(self) -> dict[str, float]:
        """A few numbers for the report's columns, keyed by column title.

        A title ending in "accuracy" is shown as a percentage, any other as a number.
        """
        return {f"{self.name} success": self.success}

    def summary(self) -> str:
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in self.headline().items())
        return f"{self.name} (level {self.level}) [{self.setting}]: success {self.success:.2f}; {numbers}"

    def to_dict(self) -> dict:
        """The JSON-safe fields plus `headline`; no images."""
        return dict(super().to_dict(), headline=json_safe(self.headline()))

    def pictures(self) -> list[tuple[str, np.ndarray]]:
        """(row title, images) for sample grids, beyond the originals and disguised images."""
        return [(k, np.asarray(v)) for k, v in self.samples.items()
                if k not in ("original", "disguised") and isinstance(v, np.ndarray)]

    def figure(self):
        """The originals, disguised images and `pictures()` as one image grid (a Figure)."""
        from tfdisguise.plots import image_grid

        rows = [(k, np.asarray(self.samples[k])) for k in ("original", "disguised") if k in self.samples]
        rows += self.pictures()
        if not rows:
            raise ValueError(f"Attack result {self.name!r} holds no sample images to draw.")
        return image_grid([r for _, r in rows], [t for t, _ in rows], f"{self.name} [{self.setting}]")


def relative_success(attacked_accuracy: float, reference_accuracy: float | None = None) -> float:
    """`attack_success` clipped to [0, 1]; with no reference, the attack's accuracy itself."""
    ratio = attacked_accuracy if reference_accuracy is None else attack_success(attacked_accuracy, reference_accuracy)
    return float(min(1.0, max(0.0, ratio)))


def true_permutation(key) -> np.ndarray | None:
    """The key's block permutation, for `AttackInput.true_perm` (None unless the spec permutes exactly once)."""
    steps = key.spec.steps_of(Permute)
    if len(steps) != 1:
        return None
    return key.materials[key.spec.steps.index(steps[0])]


def examiner_reference(inp: AttackInput, n: int | None = None) -> float:
    """The examiner's accuracy on the first `n` (default all) of the victim's plain originals."""
    inp.require("examiner reference", "examiner", "victim_plain")
    return accuracy(inp.examiner, np.asarray(inp.victim_plain)[:n], np.asarray(inp.victim_labels)[:n])


@dataclasses.dataclass(frozen=True)
class Attack:
    """A registered attack: `fn(attack_input, **options) -> AttackResult` with its name and level."""

    name: str
    level: int
    fn: Callable[..., AttackResult]

    @property
    def description(self) -> str:
        """The first paragraph of the function's docstring, on one line (the report's note on it)."""
        return " ".join((self.fn.__doc__ or "").strip().split("\n\n")[0].split())

    def __call__(self, attack_input: AttackInput, **options) -> AttackResult:
        """Validates the input, hides leaked pairs from level-1 attacks, runs it and names the result."""
        attack_input.validate()
        if self.level < 2:
            attack_input = dataclasses.replace(attack_input, leaked_plain=None, leaked_disguised=None)
        result = self.fn(attack_input, **options)
        if not isinstance(result, AttackResult):
            raise TypeError(f"Attack {self.name!r} must return an AttackResult. Received: {type(result).__name__}")
        if result.name not in ("", self.name):
            raise ValueError(f"Attack {self.name!r} returned a result named {result.name!r}.")
        result.name, result.level = self.name, self.level
        result.setting = result.setting or attack_input.setting
        return result


ATTACKS: dict[str, Attack] = {}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def register_attack(name: str, level: int = 1):
    """Decorator: registers `fn(attack_input, **options) -> AttackResult` as attack `name`.

    `level` is the threat model: 1 (public data only) or 2 (also leaked pairs).
    Returns `fn` unchanged. Registering the same name for another function raises;
    `ATTACKS.pop(name)` first to replace one.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("`name` must start with a letter and hold only letters, digits, '_', '.' or '-'. "
                         f"Received: name={name!r}")
    if level not in (1, 2):
        raise ValueError(f"`level` must be 1 (public data) or 2 (leaked pairs). Received: level={level!r}")

    def decorator(fn):
        old = ATTACKS.get(name)
        # Re-running the same definition (a notebook cell, a reload) replaces it quietly.
        if old is not None and _origin(old.fn) != _origin(fn):
            raise ValueError(f"Attack {name!r} is already registered by {'.'.join(_origin(old.fn))}.")
        ATTACKS[name] = Attack(name=name, level=level, fn=fn)
        return fn

    return decorator


def _origin(fn) -> tuple[str, str]:
    return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn))


def attack_names(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The registered names in `names` (None: all, in registration order); unknown ones raise ValueError."""
    if names is None:
        return tuple(ATTACKS)
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attack(s) {unknown}; known attacks: {sorted(ATTACKS)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Each attack may be selected once. Received: {list(names)}")
    return names


def run_attacks(
    attack_input: AttackInput,
    names: Iterable[str] | None = None,
    *,
    options: dict[str, dict] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, AttackResult]:
    """Runs the selected attacks (None: all registered) on one input; returns name -> result.

    `options` maps an attack's name to keyword arguments for it; options for
    attacks that are not selected are ignored.
    """
    names = attack_names(names)
    options = options or {}
    attack_names(options)  # a misspelled name in options would otherwise be ignored silently
    attack_input.validate()
    results = {}
    for name in names:
        attack = ATTACKS[name]
        if log:
            log(f"[{attack_input.setting}] {name} attack (level {attack.level})")
        results[name] = attack(attack_input, **options.get(name, {}))
    return results
