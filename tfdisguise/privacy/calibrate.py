"""`calibrate`: a grid of disguise settings, each trained, measured and attacked.

The runner: it builds the settings (the flag grid, or explicit named specs),
trains the plain baseline and one model per setting, measures quality, visual
privacy and misusability (`metrics`), runs the selected attacks from the registry
(`attacks`) and hands the rows to `report` for the report directory:

    report.json, report.md        one row per setting; one column per attack headline
    tradeoff.png                  accuracy versus visual privacy
    kpa_curve.png                 known-plaintext attack success versus k (when that attack ran)
    samples_<setting>.png         plain, disguised and each attack's pictures
    baseline.json, results/*.json per-run results, which `resume` reuses

The plain baseline (same model, same recipe and budget) doubles as the
examiner: a DNN trained on plain images.

Example (the settings the flags describe; nothing is trained here):

>>> config = CalibrationConfig(source="data.npz", out="report", block_sizes=(4,), noise_levels=(0.0, 30.0))
>>> [name for name, _ in setting_grid(config, (8, 8, 1))]
['b4x4-n0-orthogonal-matrix-perm', 'b4x4-n30-orthogonal-matrix-perm']
>>> config.selected_attacks()[:3]
('known_plaintext', 'block_norm', 'key_agnostic')
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import time
from collections.abc import Callable

from tfdisguise import datasets, io
from tfdisguise.key import Key
from tfdisguise.mechanisms import disguise
from tfdisguise.privacy.attacks import AttackInput, attack_names, run_attacks
from tfdisguise.privacy.metrics import PrivacyReport, accuracy, misusability, visual_privacy
from tfdisguise.privacy.report import samples_figure, write_report
from tfdisguise.spec import Permute, Spec
from tfdisguise.train import TrainConfig, train_classifier

__all__ = ["CalibrationConfig", "calibrate", "setting_grid"]

_SETTING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # it names a file in results/


@dataclasses.dataclass
class CalibrationConfig:
    """What to sweep and how to measure it.

    The settings are the product of `block_sizes`, `noise_levels`, `rmt`,
    `rmt_modes` and `permute`, unless `specs` names them explicitly
    ({setting name: Spec}, for example a user's own registered mechanism).

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
    model: str = "simple_cnn"
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
    attacks: tuple[str, ...] | None = None
    specs: dict[str, Spec] | None = None

    def __post_init__(self):
        if self.attacks is not None:
            self.attacks = attack_names(self.attacks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"`ks` must hold at least one positive number of leaked pairs. Received: ks={self.ks!r}")
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
        return {"source": self.source, "validation_fraction": self.validation_fraction, "limit": self.limit,
                "seed": self.seed, "model": self.model, "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate}

    def recipe(self) -> dict:
        """What a setting's result depends on; `resume` reuses a result only if this matches."""
        return dict(self.training_recipe(), attacks=list(self.selected_attacks()),
                    attack_options=self.attack_options())

    def train_config(self) -> TrainConfig:
        return TrainConfig(model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, seed=self.seed)

    def to_dict(self) -> dict:
        """JSON-safe: tuples as lists, specs as their dicts."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "specs" and value is not None:
                value = {name: spec.to_dict() for name, spec in value.items()}
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def setting_grid(config: CalibrationConfig, image_shape) -> list[tuple[str, Spec]]:
    """(name, spec) for each setting: `config.specs` when given, else every flag combination.

    Invalid block sizes are reported, not skipped.
    """
    if config.specs is not None:
        for name, spec in config.specs.items():
            if spec.image_shape != tuple(image_shape):
                raise ValueError(f"`specs[{name!r}]` is for images of shape {spec.image_shape}, but the data's "
                                 f"images are {tuple(image_shape)}.")
        return list(config.specs.items())
    out = []
    for block, noise, rmt, mode, permute in itertools.product(
        config.block_sizes, config.noise_levels, config.rmt, config.rmt_modes, config.permute
    ):
        has_rmt = rmt not in (None, "none")
        if not has_rmt and mode != config.rmt_modes[0]:
            continue  # the mode is irrelevant without RMT
        spec = Spec.create(image_shape, block, rmt=rmt, rmt_mode=mode, permute=permute, noise=noise)
        bh, bw = spec.block_size
        name = f"b{bh}x{bw}-n{noise:g}-{rmt or 'none'}{'-' + mode if has_rmt else ''}{'-perm' if permute else ''}"
        out.append((name, spec))
    return out


def _true_perm(key: Key):
    """The key's block permutation, to score an attack's estimate of it (None unless the spec permutes once)."""
    steps = key.spec.steps_of(Permute)
    if len(steps) != 1:
        return None
    return key.materials[key.spec.steps.index(steps[0])]


def _run_setting(name, spec, data, examiner, baseline, config, log) -> dict:
    (x_tr, y_tr), (x_va, y_va) = data
    num_classes = int(max(y_tr.max(), y_va.max())) + 1
    key = Key.generate(spec)
    log(f"[{name}] training {config.model} on disguised images (key {key.fingerprint})")
    model, train_result = train_classifier(x_tr, y_tr, (x_va, y_va), key=key, config=config.train_config(),
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
        public_plain=x_tr, public_labels=y_tr, leaked_plain=leak, leaked_disguised=disguise(leak, key),
        examiner=examiner, true_perm=_true_perm(key), train_config=config.train_config(), seed=config.seed,
        setting=name,
    )
    results = run_attacks(attack_input, config.selected_attacks(), options=config.attack_options(), log=log)
    report.attacks = {n: r.to_dict() for n, r in results.items()}
    from tfdisguise.plots import save_figure

    save_figure(samples_figure(f"{name}: {spec.describe()}", x_va[:6], dis_va[:6], results.values()),
                os.path.join(config.out, f"samples_{name}.png"))
    log(report.summary())
    return report.to_dict()


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


def calibrate(config: CalibrationConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the settings and writes the report directory. Returns the report."""
    started = time.time()
    recipe = config.recipe()  # checks the attack selection against the registry before any training
    io.makedirs(config.out)
    train, val = _load_data(config)
    grid = setting_grid(config, train.image_shape)
    log(f"calibrating {len(grid)} setting(s) on {len(train)} train / {len(val)} validation images from {config.source}"
        f"; attacks: {', '.join(recipe['attacks']) or 'none'}")
    examiner, baseline = _baseline(config, train, val, log)

    rows = []
    for i, (name, spec) in enumerate(grid, 1):
        path = os.path.join(config.out, "results", f"{name}.json")
        if config.resume and os.path.exists(path):
            row = io.read_json(path)
            if row.get("recipe") != recipe or row.get("baseline_accuracy") != baseline["val_accuracy"]:
                log(f"resume: {name}: the recipe changed since it ran; running it again")
            elif not _same_spec(row.get("spec"), spec):
                log(f"resume: {name}: the spec changed since it ran; running it again")
            else:
                log(f"({i}/{len(grid)}) {name}: done before, skipped (resume)")
                rows.append(row)
                continue
        log(f"({i}/{len(grid)}) {name}: {spec.describe()}")
        row = dict(_run_setting(name, spec, ((train.x, train.y), (val.x, val.y)), examiner, baseline, config, log),
                   recipe=recipe, baseline_accuracy=baseline["val_accuracy"])
        io.write_json(path, row)
        rows.append(row)
    report = {
        "source": config.source,
        "config": config.to_dict(),
        "train_images": len(train),
        "validation_images": len(val),
        "baseline": {k: baseline[k] for k in ("model", "epochs", "val_accuracy", "seconds")},
        "settings": rows,
        "seconds": time.time() - started,
    }
    write_report(report, config.out)
    log(f"report written to {config.out} ({time.time() - started:.0f}s)")
    return report
