"""The calibration report: markdown, JSON and figures, from the runner's rows.

A row is a `PrivacyReport.to_dict()`; its `attacks` maps each attack's name to
its result's dict, whose `headline` numbers become the table's columns, so a newly
registered attack shows up without a change here.

Example (a constructed report with one setting and one attack):

>>> row = {"setting": "s1", "disguised_accuracy": 0.9, "plain_accuracy": 0.95, "visual_privacy": 0.8,
...        "misusability": 0.1, "attacks": {"toy": {"level": 1, "headline": {"toy accuracy": 0.5, "toy score": 2}}}}
>>> report = {"source": "data.npz", "train_images": 8, "validation_images": 2, "seconds": 1.0,
...           "baseline": {"model": "simple_cnn", "epochs": 1, "val_accuracy": 0.95}, "settings": [row]}
>>> print(report_markdown(report).splitlines()[4])
| setting | accuracy | gap to plain | visual privacy | misusability | toy accuracy | toy score |
>>> print(report_markdown(report).splitlines()[6])
| s1 | 90.0% | 5.0 pts | 80.0% | 10.0% | 50.0% | 2.00 |
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from tfdisguise import io
from tfdisguise.privacy.attacks import ATTACKS

__all__ = [
    "attack_columns",
    "kpa_figure",
    "report_markdown",
    "samples_figure",
    "tradeoff_figure",
    "write_report",
]


def attack_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(attack name, headline key, column title) for every headline number, in first-seen order.

    The title is the headline key, prefixed with the attack's name where two
    attacks use the same key.
    """
    pairs = []
    for row in rows:
        for name, result in row.get("attacks", {}).items():
            pairs += [(name, key) for key in result.get("headline", {}) if (name, key) not in pairs]
    keys = [key for _, key in pairs]
    return [(name, key, key if keys.count(key) == 1 else f"{name}: {key}") for name, key in pairs]


def _fmt(value, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def _attack_notes(rows: list[dict]) -> list[str]:
    names = list(dict.fromkeys(name for row in rows for name in row.get("attacks", {})))
    notes = []
    for name in names:
        attack = ATTACKS.get(name)
        text = attack.description if attack is not None else ""
        level = attack.level if attack is not None else next(
            r["attacks"][name].get("level") for r in rows if name in r.get("attacks", {}))
        notes.append(f"- `{name}` (level {level}){': ' + text if text else ''}")
    return notes


def report_markdown(report: dict) -> str:
    """The report as a markdown table: one row per setting, one column per attack headline number."""
    rows = report["settings"]
    columns = attack_columns(rows)
    head = ["setting", "accuracy", "gap to plain", "visual privacy", "misusability"] + [t for _, _, t in columns]
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
    for r in rows:
        cells = [
            r["setting"], _fmt(r["disguised_accuracy"]),
            f"{100 * (r['plain_accuracy'] - r['disguised_accuracy']):.1f} pts",
            _fmt(r["visual_privacy"]), _fmt(r["misusability"]),
        ]
        for name, key, _ in columns:
            value = r.get("attacks", {}).get(name, {}).get("headline", {}).get(key)
            cells.append(_fmt(value, percent=key.endswith("accuracy")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy: the model trained on disguised images, on disguised validation images. Visual privacy: 1 - the "
        "plain-trained examiner's accuracy on disguised images. Misusability: the disguised model's accuracy on plain "
        "images (lower is better). Attack success: the examiner's accuracy on what the attack recovers over its "
        "accuracy on the originals (1.00 = fully broken); an accuracy column is the attacker's accuracy on the "
        "victim's disguised images. Level 1 attackers hold public images only; level 2 also hold leaked pairs.",
        "",
    ]
    notes = _attack_notes(rows)
    if notes:
        lines += ["Attacks:", "", *notes, ""]
    return "\n".join(lines)


def tradeoff_figure(report: dict):
    """Accuracy on disguised data against visual privacy, one point per setting."""
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


def _kpa_by_k(row: dict) -> dict:
    return row.get("attacks", {}).get("known_plaintext", {}).get("by_k", {})


def kpa_figure(report: dict):
    """Known-plaintext attack success against the number of leaked pairs, one line per setting."""
    from tfdisguise.plots import new_figure

    fig, ax = new_figure(figsize=(6, 4))
    for r in report["settings"]:
        by_k = _kpa_by_k(r)
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


def samples_figure(title: str, plain, disguised, results: Iterable):
    """Plain and disguised samples, then each attack result's `pictures()` rows, as one image grid."""
    from tfdisguise.plots import image_grid

    rows = [("plain", np.asarray(plain)), ("disguised", np.asarray(disguised))]
    for result in results:
        rows += result.pictures()
    return image_grid([images for _, images in rows], [t for t, _ in rows], title)


def write_report(report: dict, out: str) -> None:
    """Writes report.json, report.md, tradeoff.png and, when the known-plaintext attack ran, kpa_curve.png."""
    from tfdisguise.plots import save_figure

    io.write_json(os.path.join(out, "report.json"), report)
    io.write_text(os.path.join(out, "report.md"), report_markdown(report))
    save_figure(tradeoff_figure(report), os.path.join(out, "tradeoff.png"))
    if any(_kpa_by_k(r) for r in report["settings"]):
        save_figure(kpa_figure(report), os.path.join(out, "kpa_curve.png"))
