"""The accuracy gap between plain and disguised training, at the same budget and recipe.

For each part (a data set and a disguise setting) and each recipe (a model
family with its options and training tricks), it trains the recipe on plain
images and on images disguised under each of `--keys` fresh keys, with the same
budget. The plain runs use the same seeds as the disguised ones, so both sides
get a mean and a standard deviation. The reference is the best plain recipe of
the part, whatever its architecture; each disguised recipe's gap is measured
against it.

Parts:
  mnist-paper      MNIST t10k as 8k/2k (seed 0), block 7, orthogonal matrix RMT + permutation, noise 100
  mnist-noise0     the same disguise without noise
  mnist-adapter    the issue's adapter prototype setting: the same without permutation, noise 100
  mnist-noiseonly  noise 100 alone (no RMT, no permutation): the floor that undoing the linear part leaves
  mnist-scramble   block scrambling per position (ELE-like) + permutation, noise 100, block 7: the privacy map's
                   most accurate learnable setting (RESULTS section 7)
  cifar-poster     CIFAR-10 train.npz as 40k/10k (seed 0), block 2, orthogonal matrix RMT, noise 25
  cifar-perm       the same with block permutation
  cifar-noiseonly  noise 25 alone

Plain runs do not depend on the disguise, so they run once per data set and
recipe and serve every part of that data set.

Writes `results.jsonl` (one line per training, appended, so an interrupted run
resumes with `--resume`), `summary.md` (mean +- sd per recipe, gaps) and
`curves_<part>.png` (validation accuracy per epoch, mean over keys) to `--out`.

Usage (the figures in docs/RESULTS.md):
  python benchmarks/model_gap.py --data ../shared/data --parts mnist-paper \
      --recipes cnn+aug,adapter+aug,vit+aug --epochs 6 --keys 3 --out benchmarks/out/model_gap --resume
Sizing the budget: `--epochs`, `--limit` (training images), `--val-limit`,
`--keys`, `--parts`, `--recipes`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

PARTS = {
    "mnist-paper": {"data": "mnist", "spec": {"block_size": 7, "rmt": "orthogonal", "rmt_mode": "matrix",
                                              "permute": True, "noise": 100}},
    "mnist-noise0": {"data": "mnist", "spec": {"block_size": 7, "rmt": "orthogonal", "rmt_mode": "matrix",
                                               "permute": True, "noise": 0}},
    "mnist-adapter": {"data": "mnist", "spec": {"block_size": 7, "rmt": "orthogonal", "rmt_mode": "matrix",
                                                "permute": False, "noise": 100}},
    "mnist-noiseonly": {"data": "mnist", "spec": {"block_size": 7, "rmt": None, "permute": False, "noise": 100}},
    "mnist-scramble": {"data": "mnist", "spec": {"block_size": 7, "rmt": None, "scramble": "per_position",
                                                 "permute": True, "noise": 100}},
    "cifar-poster": {"data": "cifar10", "spec": {"block_size": 2, "rmt": "orthogonal", "rmt_mode": "matrix",
                                                 "permute": False, "noise": 25}},
    "cifar-perm": {"data": "cifar10", "spec": {"block_size": 2, "rmt": "orthogonal", "rmt_mode": "matrix",
                                               "permute": True, "noise": 25}},
    "cifar-noiseonly": {"data": "cifar10", "spec": {"block_size": 2, "rmt": None, "permute": False, "noise": 25}},
}

# The parts whose disguise a key-free attack inverts (tfdisguise.privacy.attacks.inverse_map): RMT (spectral) and
# block scrambling (scramble_search); inverse_stem.py and model_gap_jax.py --inverse-stem take these.
INVERTIBLE_PARTS = sorted(name for name, part in PARTS.items()
                          if part["spec"].get("rmt") or part["spec"].get("scramble"))

SOURCES = {"mnist": "mnist", "cifar10": "cifar10/train.npz"}

# Recipe name -> TrainConfig fields per data set (epochs and seed come from the command line). Block models
# name their block size and adapter structure, so that the plain run builds the same architecture.
_MNIST_AUG = {"augment": "translate=0.08,rotate=0.03", "label_smoothing": 0.1}
_CIFAR_AUG = {"augment": "crop=0.125,flip", "label_smoothing": 0.1}
_ADAPTER = {"structure": "matrix", "lr_multiplier": 100}
RECIPES = {
    "mnist": {
        "cnn": {"model": "simple_cnn"},
        "cnn+aug": {"model": "simple_cnn", **_MNIST_AUG},
        "adapter": {"model": "block_adapter", "model_options": {"block_size": 7, "backbone": "simple_cnn", **_ADAPTER}},
        "adapter+aug": {"model": "block_adapter", **_MNIST_AUG,
                        "model_options": {"block_size": 7, "backbone": "simple_cnn", **_ADAPTER}},
        "vit+aug": {"model": "block_vit", **_MNIST_AUG, "warmup_epochs": 1,
                    "model_options": {"block_size": 7, "dim": 64, "depth": 4, "heads": 4, "dropout": 0.1}},
    },
    "cifar10": {
        # simple_cnn recipes: what 2 CPU cores can train for 15 epochs; resnet20 ones for a GPU.
        "cnn+aug": {"model": "simple_cnn", **_CIFAR_AUG},
        "adapter-cnn+aug": {"model": "block_adapter", **_CIFAR_AUG,
                            "model_options": {"block_size": 2, "backbone": "simple_cnn", **_ADAPTER}},
        "resnet20": {"model": "resnet20"},
        "resnet20+aug": {"model": "resnet20", **_CIFAR_AUG},
        "adapter+aug": {"model": "block_adapter", **_CIFAR_AUG,
                        "model_options": {"block_size": 2, "backbone": "resnet20", **_ADAPTER}},
        "vit+aug": {"model": "block_vit", **_CIFAR_AUG, "warmup_epochs": 1,
                    "model_options": {"block_size": 2, "dim": 64, "depth": 4, "heads": 4, "dropout": 0.1}},
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="directory with mnist/ and cifar10/train.npz")
    p.add_argument("--parts", default="mnist-paper,mnist-noise0", help=f"comma list of {sorted(PARTS)}")
    p.add_argument("--recipes", default=None, help="comma list of recipe names (default: all for the data set)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--keys", type=int, default=3, help="keys (and plain seeds) per recipe")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--no-plain", action="store_true", help="skip plain runs that are not yet in results.jsonl")
    p.add_argument("--no-disguised", action="store_true",
                   help="skip disguised runs that are not yet in results.jsonl (plain seeds only, e.g. for the "
                        "reference of benchmarks/inverse_stem.py)")
    p.add_argument("--out", default="benchmarks/out/model_gap")
    p.add_argument("--resume", action="store_true", help="skip trainings already in results.jsonl")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: summarize what results.jsonl holds for --parts (implies --resume)")
    return p.parse_args(argv)


def load_part(args, part):
    from tfdisguise import datasets

    source = os.path.join(args.data, SOURCES[PARTS[part]["data"]])
    train = datasets.load(source, "train", validation_fraction=0.2, seed=0)
    val = datasets.load(source, "validation", validation_fraction=0.2, seed=0)
    if args.limit:
        train = train.take(args.limit)
    if args.val_limit:
        val = val.take(args.val_limit)
    return train, val


def run_id(where, recipe, side, seed, args, n_train):
    """`where` is the part for disguised runs and the data set for plain ones (shared by its parts)."""
    return f"{where}|{recipe}|{side}|seed{seed}|e{args.epochs}|b{args.batch_size}|n{n_train}"


def done_runs(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["id"]: r for r in (json.loads(line) for line in f if line.strip())}


def train_one(train, val, recipe_fields, seed, args, key):
    from tfdisguise.train import TrainConfig, train_classifier

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, **recipe_fields)
    model, result = train_classifier(train.x, train.y, (val.x, val.y), key=key, config=config, progress=False,
                                     num_classes=10)
    return model, result


def stem_diagnostics(model, key, images) -> dict:
    """How much of the key a trained `block_adapter` stem has learned (the cloud holds these weights).

    - `inversion_corr`: mean per-pixel correlation between the stem's output on
      noise-free disguised `images` and the plain images (about 1 if the stem
      undoes the disguise, about 0 if not).
    - `diag_share`: for a matrix-mode RMT, the share of each R_j A_j's energy on
      its diagonal (1 = the adapter is R_j^-1 up to scale; 1/bw for a random one).
    - `perm_mass`: the soft permutation's mass on the true inverse permutation
      (1 = learned; 1/t = uniform).
    """
    import keras

    from tfdisguise import Key, disguise

    names = [layer.name for layer in model.layers]
    if "block_adapter" not in names or not key.spec.has("rmt"):
        return {}
    spec, linear = key.spec, key.plan.linear
    out = {}
    adapter = model.get_layer("block_adapter")
    if adapter.structure == "matrix" and spec.steps_of("rmt")[0].mode == "matrix":
        c, bw = spec.image_shape[2], spec.block_size[1]
        r = linear.matrices[:, :bw * c:c, :bw * c:c]  # M_j = kron(I, kron(R_j, I_C))
        p = np.einsum("tij,tjk->tik", r, keras.ops.convert_to_numpy(adapter.matrices))
        p = p / np.linalg.norm(p, axis=(1, 2), keepdims=True)
        out["diag_share"] = float(np.mean(np.sum(np.diagonal(p, axis1=1, axis2=2) ** 2, axis=-1)))
    if "block_permutation" in names and linear.perm is not None:
        s = keras.ops.convert_to_numpy(model.get_layer("block_permutation").matrix)
        out["perm_mass"] = float(np.mean(s[linear.perm, np.arange(len(linear.perm))]))
    last = "block_permutation" if "block_permutation" in names else "block_adapter"
    stem = keras.Model(model.inputs, model.get_layer(last).output)
    noise_free = Key(key.secret_bytes(), spec.without_noise())
    feats = stem.predict(disguise(images, noise_free), verbose=0).reshape(len(images), -1).astype(np.float64)
    plain = images.reshape(len(images), -1).astype(np.float64)
    varying = plain.std(axis=0) > 1
    f = feats[:, varying] - feats[:, varying].mean(axis=0)
    g = plain[:, varying] - plain[:, varying].mean(axis=0)
    corr = (f * g).sum(axis=0) / np.sqrt((f ** 2).sum(axis=0) * (g ** 2).sum(axis=0) + 1e-12)
    out["inversion_corr"] = float(np.mean(corr))
    return out


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records, parts):
    lines = ["| part | recipe | plain acc. (mean ± sd) | disguised acc. (mean ± sd) | gap to best plain | "
             "gap to own plain | runs (plain/disguised) |", "|---|---|---|---|---|---|---|"]
    summary = {}
    for part in parts:
        data = PARTS[part]["data"]
        plain_rows = [r for r in records if r["side"] == "plain" and r["data"] == data]
        rows = [r for r in records if r["side"] == "disguised" and r["part"] == part]
        recipes = list(dict.fromkeys(r["recipe"] for r in plain_rows + rows))
        stats = {}
        for recipe in recipes:
            plain = [r["val_accuracy"] for r in plain_rows if r["recipe"] == recipe]
            disg = [r["val_accuracy"] for r in rows if r["recipe"] == recipe]
            stats[recipe] = (mean_sd(plain), mean_sd(disg), len(plain), len(disg))
        best_plain = max((s[0][0] for s in stats.values() if s[2]), default=float("nan"))
        best_name = next((n for n, s in stats.items() if s[2] and s[0][0] == best_plain), None)
        for recipe, ((pm, ps), (dm, ds), n_p, n_d) in stats.items():
            if not n_d:
                continue  # a plain-only recipe still counts for the best plain model
            gap = 100 * (best_plain - dm) if n_d else float("nan")
            own = 100 * (pm - dm) if n_d and n_p else float("nan")
            lines.append(f"| {part} | {recipe} | {_pct(pm, ps, n_p)} | {_pct(dm, ds, n_d)} | {gap:.2f} pts | "
                         f"{own:.2f} pts | {n_p}/{n_d} |")
        summary[part] = {"best_plain": best_name, "best_plain_accuracy": best_plain,
                         "recipes": {n: {"plain": s[0], "disguised": s[1], "runs": s[2:]} for n, s in stats.items()}}
    return "\n".join(lines) + "\n", summary


def _pct(mean, sd, n):
    if not n:
        return "-"
    return f"{100 * mean:.2f}% ± {100 * sd:.2f}" if n > 1 else f"{100 * mean:.2f}% (one run)"


def plot_mean_sd(ax, curves, style, color, label):
    """One line of validation accuracy (%) per epoch, mean over `curves` (cut to the shortest), with a ± sd band."""
    n = min(len(c) for c in curves)
    mean, sd = np.mean([c[:n] for c in curves], axis=0), np.std([c[:n] for c in curves], axis=0)
    epochs = np.arange(1, n + 1)
    ax.plot(epochs, 100 * mean, style, color=color, marker="o", ms=3, label=label)
    ax.fill_between(epochs, 100 * (mean - sd), 100 * (mean + sd), color=color, alpha=0.12)


def curves_figure(records, part):
    from tfdisguise.plots import new_figure

    data = PARTS[part]["data"]
    rows = [r for r in records if (r["side"] == "plain" and r["data"] == data) or r["part"] == part]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    fig, ax = new_figure(1, 1, figsize=(7, 4))
    for i, recipe in enumerate(recipes):
        for side, style in (("plain", "--"), ("disguised", "-")):
            curves = [r["curve"] for r in rows if r["recipe"] == recipe and r["side"] == side]
            if curves:
                plot_mean_sd(ax, curves, style, f"C{i}", f"{recipe} ({side})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{part}: plain (dashed) vs disguised (solid), mean ± sd over keys")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    from tfdisguise import Key, Spec
    from tfdisguise.plots import save_figure

    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "results.jsonl")
    done = done_runs(log_path) if args.resume or args.summary_only else {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        sys.exit(f"--parts: unknown {unknown}; choose from {sorted(PARTS)}")
    loaded = {}
    for part in parts:
        data = PARTS[part]["data"]
        names = args.recipes.split(",") if args.recipes else list(RECIPES[data])
        bad = [n for n in names if n not in RECIPES[data]]
        if bad:
            sys.exit(f"--recipes: unknown for {data}: {bad}; choose from {sorted(RECIPES[data])}")
        if data not in loaded:
            loaded[data] = load_part(args, part)
        train, val = loaded[data]
        spec = Spec.create(train.image_shape, **PARTS[part]["spec"])
        print(f"== {part}: {spec.describe()}; {len(train)} train / {len(val)} validation images, "
              f"{args.epochs} epochs, {args.keys} keys", flush=True)
        for name in [] if args.summary_only else names:
            for seed in range(args.keys):
                for side in ("plain", "disguised"):
                    where = data if side == "plain" else part
                    rid = run_id(where, name, side, seed, args, len(train))
                    skipped = args.no_plain if side == "plain" else args.no_disguised
                    if rid in done or skipped:
                        continue
                    key = Key.generate(spec) if side == "disguised" else None
                    started = time.time()
                    model, result = train_one(train, val, RECIPES[data][name], seed, args, key)
                    record = {"id": rid, "data": data, "part": where, "recipe": name, "side": side, "seed": seed,
                              "fingerprint": key.fingerprint if key else None,
                              "spec": spec.describe() if key else "plain",
                              "recipe_fields": RECIPES[data][name], "epochs": args.epochs,
                              "train_images": len(train), "val_images": len(val),
                              "val_accuracy": result.val_accuracy, "curve": result.history.get("val_accuracy"),
                              "seconds": round(time.time() - started, 1),
                              "stem": stem_diagnostics(model, key, val.x[:1000]) if key else {}}
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    done[rid] = record
                    print(f"{where} {name:>14} {side:>9} seed {seed}: {100 * result.val_accuracy:.2f}% "
                          f"({record['seconds']:.0f}s)", flush=True)
    datas = {PARTS[p]["data"] for p in parts}
    records = [r for r in done.values() if r["data"] in datas and r["epochs"] == args.epochs
               and r["train_images"] == len(loaded[r["data"]][0])]
    table, summary = summarize(records, parts)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    for part in parts:
        save_figure(curves_figure(records, part), os.path.join(args.out, f"curves_{part}.png"))
    print(table)
    return summary


if __name__ == "__main__":
    main()
