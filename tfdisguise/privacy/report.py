"""The calibration report: markdown, JSON and figures, from the runner's rows.

A row is one setting: the mean over its keys of `PrivacyReport.to_dict()`,
with the spread in `sd`, `success_sd` and `headline_sd` (see
`calibrate.aggregate_runs`). Its `attacks` maps each attack's name to its
result's dict, whose `headline` numbers become the table's columns, so a newly
registered attack shows up without a change here.

An attack *breaks* a setting when its success (the examiner's accuracy on what
it recovers over its accuracy on the originals) is at least `BROKEN_AT` = 0.5
on average over the keys; the report says so in words for every setting.

Example (a constructed report with one setting and one attack):

>>> row = {"setting": "s1", "disguised_accuracy": 0.9, "plain_accuracy": 0.95, "visual_privacy": 0.8,
...        "misusability": 0.1, "attacks": {"toy": {"level": 1, "success": 0.6,
...                                                 "headline": {"toy accuracy": 0.5, "toy score": 2}}}}
>>> report = {"source": "data.npz", "train_images": 8, "validation_images": 2, "seconds": 1.0,
...           "baseline": {"model": "simple_cnn", "epochs": 1, "val_accuracy": 0.95}, "settings": [row]}
>>> lines = report_markdown(report).splitlines()
>>> print(lines[4])
| setting | accuracy | gap to plain | visual privacy | misusability | worst level-1 success | toy accuracy | toy score |
>>> print(lines[6])
| s1 | 90.0% | 5.0 pts | 80.0% | 10.0% | 0.60 (toy) | 50.0% | 2.00 |
>>> print(next(line for line in lines if line.startswith("- `s1`")))
- `s1`: **broken** by `toy` (level 1, success 0.60).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from tfdisguise import io
from tfdisguise.privacy.attacks import ATTACKS

__all__ = [
    "BROKEN_AT",
    "attack_columns",
    "frontier_figure",
    "frontier_settings",
    "kpa_figure",
    "pareto_front",
    "report_markdown",
    "samples_figure",
    "tradeoff_figure",
    "write_report",
]

BROKEN_AT = 0.5  # an attack with at least this success breaks a setting


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


def _fmt(value, percent: bool = True, sd: float | None = None) -> str:
    """A table cell: "90.0%" or "0.83", with " ± sd" (in points for percentages) when the keys spread."""
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")
    return f"{value:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def _worst_level1(row: dict) -> dict | None:
    """The row's worst level-1 attack (as `aggregate_runs` gives it, or from the attacks' successes)."""
    if "worst_level1" in row:
        return row["worst_level1"]
    level1 = {n: a["success"] for n, a in row.get("attacks", {}).items()
              if a.get("level") == 1 and a.get("success") is not None}
    if not level1:
        return None
    name = max(level1, key=level1.get)
    return {"success": level1[name], "sd": None, "attack": name}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (attack success, accuracy) points that no other point beats on both, by rising success.

    Lower success and higher accuracy are better.

    >>> pareto_front([(0.9, 0.95), (0.2, 0.80), (0.5, 0.70), (0.1, 0.60), (0.2, 0.85)])
    [3, 4, 0]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _frontier_points(rows: list[dict]) -> list[tuple[dict, dict]]:
    return [(r, w) for r in rows if (w := _worst_level1(r)) is not None]


def frontier_settings(rows: list[dict]) -> list[str]:
    """The settings on the Pareto front of accuracy against the worst level-1 attack's success."""
    points = _frontier_points(rows)
    front = pareto_front([(w["success"], r["disguised_accuracy"]) for r, w in points])
    return [points[i][0]["setting"] for i in front]


def _verdict(row: dict) -> str:
    """One sentence: which attacks break the setting (mean success >= BROKEN_AT), which do under some keys."""
    attacks = row.get("attacks", {})
    if not attacks:
        return f"- `{row['setting']}`: no attack ran."
    keys = row.get("keys", 1)

    def said(name, a):
        spread = f" ± {a['success_sd']:.2f}" if a.get("success_sd") is not None else ""
        under = f", {a['broken_keys']}/{keys} keys" if keys > 1 and a.get("broken_keys") else ""
        return f"`{name}` (level {a.get('level', '?')}, success {a['success']:.2f}{spread}{under})"

    broken = [(n, a) for n, a in attacks.items() if a["success"] >= BROKEN_AT]
    partly = [(n, a) for n, a in attacks.items() if a["success"] < BROKEN_AT and a.get("broken_keys")]
    if broken:
        text = "**broken** by " + ", ".join(said(n, a) for n, a in broken)
    else:
        worst = _worst_level1(row)
        strongest = f"; the strongest level-1 attack is {said(worst['attack'], attacks[worst['attack']])}" \
            if worst else ""
        text = f"no attack reaches success {BROKEN_AT:g}{strongest}"
    if partly:
        text += "; under some keys: " + ", ".join(said(n, a) for n, a in partly)
    return f"- `{row['setting']}`: {text}."


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


def _public_sentence(report: dict) -> str:
    public = report.get("public")
    if not public:
        return ""
    shared = public.get("shared_with_victim")
    overlap = (f"; {shared} of them identical to one of the victim's images" if shared
               else "; none identical to any of the victim's images")
    return f" Attacker's public data: {public['description']} ({public['images']} images{overlap})."


def report_markdown(report: dict) -> str:
    """The report as markdown: a table (one row per setting, mean ± sd over keys, one column per attack
    headline number), then in words which attacks break each setting."""
    rows = report["settings"]
    columns = attack_columns(rows)
    head = ["setting", "accuracy", "gap to plain", "visual privacy", "misusability", "worst level-1 success"]
    head += [t for _, _, t in columns]
    keys = report.get("keys", 1)
    spread = f" Each setting ran under {keys} keys (each its own model); cells are mean ± sd." if keys > 1 else ""
    lines = [
        f"# Calibration report: {report['source']}",
        "",
        f"{report['train_images']} training / {report['validation_images']} validation images; "
        f"model {report['baseline']['model']}, {report['baseline']['epochs']} epochs per training; "
        f"plain baseline accuracy {_fmt(report['baseline']['val_accuracy'])}; total {report['seconds']:.0f}s."
        + spread + _public_sentence(report),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        sd = r.get("sd", {})
        worst = _worst_level1(r)
        cells = [
            r["setting"], _fmt(r["disguised_accuracy"], sd=sd.get("disguised_accuracy")),
            f"{100 * (r['plain_accuracy'] - r['disguised_accuracy']):.1f} pts",
            _fmt(r["visual_privacy"], sd=sd.get("visual_privacy")),
            _fmt(r["misusability"], sd=sd.get("misusability")),
            f"{_fmt(worst['success'], False, worst.get('sd'))} ({worst['attack']})" if worst else "-",
        ]
        for name, key, _ in columns:
            attack = r.get("attacks", {}).get(name, {})
            value = attack.get("headline", {}).get(key)
            cells.append(_fmt(value, percent=key.endswith("accuracy"), sd=attack.get("headline_sd", {}).get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy: the model trained on disguised images, on disguised validation images. Visual privacy: 1 - the "
        "plain-trained examiner's accuracy on disguised images. Misusability: the disguised model's accuracy on plain "
        "images (lower is better). Attack success: the examiner's accuracy on what the attack recovers over its "
        "accuracy on the originals (1.00 = fully broken); an accuracy column is the attacker's accuracy on the "
        "victim's disguised images; an attack that only guesses scores about 1 / the number of classes. "
        "Worst level-1 success: for each key the highest success of any level-1 attack, "
        "averaged over the keys (in brackets the attack worst on average). Level 1 attackers hold public images "
        "only; level 2 also hold leaked pairs.",
        "",
        f"## Which attacks break each setting (success >= {BROKEN_AT:g})",
        "",
        *[_verdict(r) for r in rows],
        "",
    ]
    front = frontier_settings(rows)
    if front:
        lines += ["Pareto front of accuracy against the worst level-1 attack (frontier.png), from the least attacked: "
                  + ", ".join(f"`{name}`" for name in front) + ".", ""]
    if report.get("skipped"):
        lines += ["## Settings not run", "", *[f"- `{s['setting']}`: {s['reason']}" for s in report["skipped"]], ""]
    notes = _attack_notes(rows)
    if notes:
        lines += ["Attacks:", "", *notes, ""]
    return "\n".join(lines)


def _sd_of(row: dict, measure: str) -> float:
    return row.get("sd", {}).get(measure) or 0.0


# More settings than this and the points get numbers, with the names listed beside the axes.
_NAMED_POINTS = 8


def _label_points(ax, fig, xys: list, names: list[str], fontsize: float = 6) -> None:
    """Labels each point without overlaps: each label takes the first of several offsets around its point whose
    box (estimated from the font size) clears the labels placed so far. With many points the labels are numbers
    and a key beside the axes names them."""
    if not names:
        return
    numbered = len(names) > _NAMED_POINTS
    labels = [str(i) for i in range(1, len(names) + 1)] if numbered else list(names)
    fig.canvas.draw()  # fixes the axes' limits, so that data coordinates map to display coordinates
    to_pt = 72.0 / fig.dpi
    frame = ax.get_window_extent()
    ax0, ay0, ax1, ay1 = frame.x0 * to_pt, frame.y0 * to_pt, frame.x1 * to_pt, frame.y1 * to_pt
    placed = []
    offsets = [(3, 3), (3, -9), (-3, 3), (-3, -9), (3, 11), (-3, 11), (3, -17), (-3, -17), (9, -3), (-9, -3)]
    for (x, y), label in zip(xys, labels):
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        width, height = 0.62 * fontsize * len(label), fontsize
        boxes = []
        for dx, dy in offsets:
            x0 = px + dx - (width if dx < 0 else 0)
            boxes.append((dx, dy, (x0, py + dy, x0 + width, py + dy + height)))

        def free(box):
            return not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed)

        def inside(box):  # a label past the axes' edge is cut off where the figure ends (a point at success 1.0)
            return ax0 <= box[0] and box[2] <= ax1 and ay0 <= box[1] and box[3] <= ay1

        choice = (next((c for c in boxes if inside(c[2]) and free(c[2])), None)
                  or next((c for c in boxes if inside(c[2])), None) or next((c for c in boxes if free(c[2])), None))
        dx, dy, box = choice or boxes[0]
        placed.append(box)
        ax.annotate(label, (x, y), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                    ha="right" if dx < 0 else "left")
    if numbered:
        key = "\n".join(f"{i}  {n}" for i, n in enumerate(names, 1))
        ax.text(1.02, 1.0, key, transform=ax.transAxes, fontsize=max(4.0, fontsize - 1), va="top", ha="left",
                family="monospace")



def frontier_figure(report: dict):
    """Accuracy against the worst level-1 attack's success, one point per setting (error bars: sd over keys),
    with the Pareto front drawn and the broken region (success >= 0.5) shaded."""
    from tfdisguise.plots import new_figure

    points = _frontier_points(report["settings"])
    many = len(points) > _NAMED_POINTS
    fig, ax = new_figure(figsize=(10.5 if many else 7, max(4.8, 0.095 * len(points) + 1) if many else 4.8))
    ax.axvspan(BROKEN_AT, 1.05, color="tab:red", alpha=0.07, label=f"broken (success >= {BROKEN_AT:g})")
    for r, worst in points:
        x, y = worst["success"], 100 * r["disguised_accuracy"]
        ax.errorbar(x, y, xerr=worst.get("sd") or 0.0, yerr=100 * _sd_of(r, "disguised_accuracy"), fmt="o",
                    ms=4, capsize=2, alpha=0.85)
    front = pareto_front([(w["success"], r["disguised_accuracy"]) for r, w in points])
    if front:
        xs = [points[i][1]["success"] for i in front]
        ys = [100 * points[i][0]["disguised_accuracy"] for i in front]
        ax.step(xs + [1.05], ys + [ys[-1]], where="post", color="black", lw=1, label="Pareto front")
    if not points:
        ax.text(0.5, 0.5, "no level-1 attack ran", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(100 * report["baseline"]["val_accuracy"], ls="--", color="gray", label="plain baseline")
    ax.set_xlim(-0.03, 1.05)
    ax.set_xlabel("worst level-1 attack success (lower is more private)")
    ax.set_ylabel("accuracy on disguised data (%)")
    keys = report.get("keys", 1)
    ax.set_title(f"privacy map: {report['source']}" + (f" ({keys} keys per setting)" if keys > 1 else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if many:
        fig.subplots_adjust(left=0.08, right=0.62, bottom=0.1, top=0.93)
    else:
        fig.tight_layout()
    _label_points(ax, fig, [(w["success"], 100 * r["disguised_accuracy"]) for r, w in points],
                  [r["setting"] for r, _ in points])
    return fig


def tradeoff_figure(report: dict):
    """Accuracy on disguised data against visual privacy, one point per setting."""
    from tfdisguise.plots import new_figure

    rows = report["settings"]
    many = len(rows) > _NAMED_POINTS
    fig, ax = new_figure(figsize=(10 if many else 6, max(4.2, 0.095 * len(rows) + 1) if many else 4.2))
    for r in rows:
        ax.errorbar(100 * r["visual_privacy"], 100 * r["disguised_accuracy"], xerr=100 * _sd_of(r, "visual_privacy"),
                    yerr=100 * _sd_of(r, "disguised_accuracy"), fmt="o", ms=4, capsize=2)
    ax.axhline(100 * report["baseline"]["val_accuracy"], ls="--", color="gray", label="plain baseline")
    ax.set_xlabel("visual privacy (%)")
    ax.set_ylabel("accuracy on disguised data (%)")
    ax.set_title("accuracy versus privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if many:
        fig.subplots_adjust(left=0.08, right=0.6, bottom=0.1, top=0.93)
    else:
        fig.tight_layout()
    _label_points(ax, fig, [(100 * r["visual_privacy"], 100 * r["disguised_accuracy"]) for r in rows],
                  [r["setting"] for r in rows], fontsize=7 if not many else 6)
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
    attacks = []
    for result in results:
        pictures = result.pictures()
        rows += pictures
        attacks += [result.name.replace("_", " ")] * len(pictures)
    titles = [t for t, _ in rows]
    # Several attacks call their row "reconstructed": each such row names its attack, so none is anonymous.
    for i, attack in enumerate(attacks, start=2):
        if titles.count(titles[i]) > 1 or titles[i] in _GENERIC_TITLES:
            titles[i] = f"{attack}:\n{titles[i]}"
    return image_grid([images for _, images in rows], titles, title)


_GENERIC_TITLES = ("reconstructed", "reconstruction", "recovered")


def write_report(report: dict, out: str) -> None:
    """Writes report.json, report.md, frontier.png, tradeoff.png and, when the known-plaintext attack ran,
    kpa_curve.png."""
    from tfdisguise.plots import save_figure

    io.write_json(os.path.join(out, "report.json"), report)
    io.write_text(os.path.join(out, "report.md"), report_markdown(report))
    save_figure(frontier_figure(report), os.path.join(out, "frontier.png"))
    save_figure(tradeoff_figure(report), os.path.join(out, "tradeoff.png"))
    if any(_kpa_by_k(r) for r in report["settings"]):
        save_figure(kpa_figure(report), os.path.join(out, "kpa_curve.png"))
