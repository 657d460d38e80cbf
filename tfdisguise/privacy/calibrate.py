"""`calibrate`: a grid of disguise settings, each trained, measured and attacked.

Writes a report directory:

    report.json, report.md        one row per setting
    tradeoff.png                  accuracy versus visual privacy
    kpa_curve.png                 known-plaintext attack success versus k
    samples_<setting>.png         plain, disguised, reconstructions, block-norm thumbnails
    baseline.json, results/*.json per-run results, which `resume` reuses

The plain baseline (same model, same recipe and budget) doubles as the
examiner: a DNN trained on plain images.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Callable

import numpy as np

from tfdisguise import datasets, io
from tfdisguise.key import Key
from tfdisguise.mechanisms import disguise
from tfdisguise.privacy import attacks
from tfdisguise.privacy.metrics import PrivacyReport, accuracy
from tfdisguise.spec import Permute, Spec
from tfdisguise.train import TrainConfig, train_classifier

__all__ = ["CalibrationConfig", "calibrate", "setting_grid", "write_report"]


@dataclasses.dataclass
class CalibrationConfig:
    """What to sweep and how to measure it."""

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

    def recipe(self) -> dict:
        """What a finished result depends on; `resume` reuses a result only if this matches."""
        return {"source": self.source, "validation_fraction": self.validation_fraction, "limit": self.limit,
                "seed": self.seed, "model": self.model, "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "ks": list(self.ks), "attack_images": self.attack_images,
                "key_agnostic": self.key_agnostic, "key_agnostic_keys": self.key_agnostic_keys,
                "key_agnostic_images": self.key_agnostic_images}

    def train_config(self) -> TrainConfig:
        return TrainConfig(model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, seed=self.seed)


def setting_grid(config: CalibrationConfig, image_shape) -> list[tuple[str, Spec]]:
    """(name, spec) for every combination; invalid block sizes are reported, not skipped."""
    out = []
    for block, noise, rmt, mode, permute in itertools.product(
        config.block_sizes, config.noise_levels, config.rmt, config.rmt_modes, config.permute
    ):
        if rmt in (None, "none") and mode != config.rmt_modes[0]:
            continue  # the mode is irrelevant without RMT
        spec = Spec.create(image_shape, block, rmt=rmt, rmt_mode=mode, permute=permute, noise=noise)
        bh, bw = spec.block_size
        name = f"b{bh}x{bw}-n{noise:g}-{rmt or 'none'}{'-' + mode if rmt not in (None, 'none') else ''}{'-perm' if permute else ''}"
        out.append((name, spec))
    return out


# An interrupted run never leaves a half-written result.
_write_text = io.write_text
_write_json = io.write_json


def _true_perm(key: Key):
    return key.plan.linear.perm if any(isinstance(s, Permute) for s in key.spec.steps) else None


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
        visual_privacy=1.0 - accuracy(examiner, dis_va, y_va),
        misusability=accuracy(model, x_va, y_va),
        examiner_accuracy_plain=accuracy(examiner, x_va, y_va),
        train={"epochs": config.epochs, "seconds": train_result.seconds, "history": train_result.history},
    )
    n_att = min(config.attack_images, len(x_va))
    log(f"[{name}] known-plaintext attack at k={list(config.ks)}")
    leak = x_tr[: max(config.ks)]
    kpa = attacks.known_plaintext_attack(leak, disguise(leak, key), x_va[:n_att], dis_va[:n_att], y_va[:n_att], spec,
                                         examiner, ks=config.ks, setting=name)
    report.known_plaintext = kpa.to_dict()
    log(f"[{name}] block-norm thumbnail attack")
    bn = attacks.block_norm_attack(x_tr, y_tr, dis_va, y_va, x_va, spec, num_classes=num_classes,
                                   true_perm=_true_perm(key), setting=name, seed=config.seed)
    report.block_norm = bn.to_dict()
    if config.key_agnostic:
        log(f"[{name}] key-agnostic examiner ({config.key_agnostic_keys} random keys)")
        n_ka = config.key_agnostic_images or len(x_tr)
        ka = attacks.key_agnostic_attack(x_tr[:n_ka], y_tr[:n_ka], dis_va, y_va, spec, num_classes=num_classes,
                                         num_keys=config.key_agnostic_keys, config=config.train_config(), setting=name)
        report.key_agnostic = ka.to_dict()
    from tfdisguise.plots import image_grid, save_figure

    recon = kpa.samples["reconstructed"]
    rows = [kpa.samples["original"], kpa.samples["disguised"]] + [recon[k] for k in config.ks]
    titles = ["plain", "disguised"] + [f"KPA k={k}" for k in config.ks]
    rows.append(bn.samples["thumbnail"][..., np.newaxis])
    titles.append("block norms")
    save_figure(image_grid(rows, titles, f"{name}: {spec.describe()}"),
                os.path.join(config.out, f"samples_{name}.png"))
    log(report.summary())
    return report.to_dict()


def calibrate(config: CalibrationConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the grid and writes the report directory. Returns the report."""
    started = time.time()
    os.makedirs(config.out, exist_ok=True)
    train = datasets.load(config.source, "train", validation_fraction=config.validation_fraction,
                          seed=config.seed, limit=config.limit)
    val = datasets.load(config.source, "validation", validation_fraction=config.validation_fraction, seed=config.seed)
    if config.limit:
        val = val.take(max(1, int(config.limit * config.validation_fraction)))
    data = ((train.x, train.y), (val.x, val.y))
    grid = setting_grid(config, train.image_shape)
    log(f"calibrating {len(grid)} setting(s) on {len(train)} train / {len(val)} validation images from {config.source}")

    baseline_path = os.path.join(config.out, "baseline.json")
    examiner_path = os.path.join(config.out, "examiner.keras")
    import keras

    recipe = config.recipe()
    baseline = None
    if config.resume and os.path.exists(baseline_path) and os.path.exists(examiner_path):
        baseline = io.read_json(baseline_path)
        if baseline.get("recipe") == recipe:
            examiner = keras.models.load_model(examiner_path)
            log(f"resume: plain baseline {baseline['val_accuracy']:.4f} (from {baseline_path})")
        else:
            log("resume: the recipe changed since the plain baseline was trained; training it again")
            baseline = None
    if baseline is None:
        log(f"training the plain baseline / examiner: {config.model}, {config.epochs} epochs")
        examiner, result = train_classifier(train.x, train.y, (val.x, val.y), config=config.train_config(),
                                            progress=False)
        examiner.save(examiner_path)
        baseline = dict(dataclasses.asdict(result), recipe=recipe)
        _write_json(baseline_path, baseline)
        log(f"plain baseline: {result.summary()}")

    rows = []
    for i, (name, spec) in enumerate(grid, 1):
        path = os.path.join(config.out, "results", f"{name}.json")
        if config.resume and os.path.exists(path):
            row = io.read_json(path)
            if row.get("recipe") == recipe and row.get("baseline_accuracy") == baseline["val_accuracy"]:
                log(f"({i}/{len(grid)}) {name}: done before, skipped (resume)")
                rows.append(row)
                continue
        log(f"({i}/{len(grid)}) {name}: {spec.describe()}")
        row = dict(_run_setting(name, spec, data, examiner, baseline, config, log), recipe=recipe,
                   baseline_accuracy=baseline["val_accuracy"])
        _write_json(path, row)
        rows.append(row)
    report = {
        "source": config.source,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "train_images": len(train),
        "validation_images": len(val),
        "baseline": {k: baseline[k] for k in ("model", "epochs", "val_accuracy", "seconds")},
        "settings": rows,
        "seconds": time.time() - started,
    }
    write_report(report, config.out)
    log(f"report written to {config.out} ({time.time() - started:.0f}s)")
    return report


def _fmt(v, pct=True):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def report_markdown(report: dict) -> str:
    ks = report["config"]["ks"]
    head = ["setting", "accuracy", "gap to plain", "visual privacy", "misusability"]
    head += [f"KPA success k={k}" for k in ks] + ["block-norm examiner", "key-agnostic examiner"]
    lines = [
        f"# Calibration report: {report['source']}",
        "",
        f"{report['train_images']} training / {report['validation_images']} validation images; "
        f"model {report['baseline']['model']}, {report['baseline']['epochs']} epochs per training; "
        f"plain baseline accuracy {_fmt(report['baseline']['val_accuracy'])}; total {report['seconds']:.0f}s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in report["settings"]:
        kpa = r.get("known_plaintext", {}).get("by_k", {})
        cells = [
            r["setting"], _fmt(r["disguised_accuracy"]),
            f"{100 * (r['plain_accuracy'] - r['disguised_accuracy']):.1f} pts",
            _fmt(r["visual_privacy"]), _fmt(r["misusability"]),
        ]
        cells += [_fmt(kpa.get(str(k), {}).get("attack_success"), pct=False) for k in ks]
        cells += [_fmt(r.get("block_norm", {}).get("examiner_accuracy")),
                  _fmt(r.get("key_agnostic", {}).get("accuracy"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy: the model trained on disguised images, on disguised validation images. Visual privacy: 1 - the "
        "plain-trained examiner's accuracy on disguised images. Misusability: the disguised model's accuracy on plain "
        "images (lower is better). KPA success: examiner accuracy on images reconstructed from k leaked pairs over "
        "its accuracy on the originals (1.0 = fully broken). Block-norm / key-agnostic: accuracy of level-1 attackers "
        "(no pairs) on the victim's disguised images.",
        "",
    ]
    return "\n".join(lines)


def tradeoff_figure(report: dict):
    from tfdisguise.plots import new_figure

    fig, ax = new_figure(figsize=(6, 4.2))
    for r in report["settings"]:
        ax.scatter(100 * r["visual_privacy"], 100 * r["disguised_accuracy"])
        ax.annotate(r["setting"], (100 * r["visual_privacy"], 100 * r["disguised_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * report["baseline"]["val_accuracy"], ls="--", color="gray", label="plain baseline")
    ax.set_xlabel("visual privacy (%)")
    ax.set_ylabel("accuracy on disguised data (%)")
    ax.set_title("accuracy versus privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def kpa_figure(report: dict):
    from tfdisguise.plots import new_figure

    fig, ax = new_figure(figsize=(6, 4))
    for r in report["settings"]:
        by_k = r.get("known_plaintext", {}).get("by_k", {})
        if by_k:
            ks = sorted(by_k, key=int)
            ax.plot([int(k) for k in ks], [by_k[k]["attack_success"] for k in ks], marker="o", label=r["setting"])
    ax.set_xscale("log")
    ax.set_xlabel("leaked plain/disguised pairs k")
    ax.set_ylabel("attack success")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("known-plaintext regression")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(report: dict, out: str) -> None:
    from tfdisguise.plots import save_figure

    _write_json(os.path.join(out, "report.json"), report)
    _write_text(os.path.join(out, "report.md"), report_markdown(report))
    save_figure(tradeoff_figure(report), os.path.join(out, "tradeoff.png"))
    save_figure(kpa_figure(report), os.path.join(out, "kpa_curve.png"))
