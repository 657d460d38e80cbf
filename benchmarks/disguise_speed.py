"""Disguise speed, measured side by side in one process.

For a CIFAR-size setting (32x32x3, block 4, vector RMT + permutation + noise 25)
and the paper's MNIST setting (28x28x1, block 7, matrix RMT + permutation +
noise 100) it times:

  (a) our batched path (the graph `wrap` runs),
  (b) a straightforward per-image numpy implementation like the authors' code,
  (c) a bare batched matmul [t, N, d] @ [t, d, d] of the same shapes,

and the `model.fit` epoch time of the simple CNN on MNIST-size data, plain
versus through `wrap`. It prints medians and the ratios; targets are
(a)/(c) >= 0.5, (a)/(b) >= 50, and wrap adding <= 5% to the epoch time.

Usage:
  python benchmarks/disguise_speed.py --cifar ../shared/data/cifar10/train.npz \
      --mnist ../shared/data/mnist [--json out.json]
Without data paths it uses random images of the same shapes (speed does not
depend on pixel values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tfdisguise
from tfdisguise import datasets, mechanisms, models
from tfdisguise.data import _tf_uniform, batch_disguiser
from tfdisguise.mechanisms.reference import disguise_batch


def timeit(fn, repeats: int) -> list[float]:
    fn()  # warm-up: tracing and allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_disguise(name, x, spec, batch, repeats, ref_images):
    key = tfdisguise.Key.generate(spec)
    plan = key.plan
    images = tf.constant(x[:batch])

    ours = tf.function(batch_disguiser(key))  # exactly what wrap() maps over batches
    t_a = statistics.median(timeit(lambda: ours(images).numpy(), repeats))

    linear = plan.linear
    blocks = mechanisms.to_blocks(tf.cast(images, tf.float32), spec)
    mats = tf.constant(linear.matrices.astype(np.float32))
    bare = tf.function(lambda b: tf.matmul(b, mats))
    t_c = statistics.median(timeit(lambda: bare(blocks).numpy(), repeats))

    # Breakdown: the same path without its noise step, and the noise draw alone.
    noiseless = tfdisguise.Key.generate(spec.without_noise())
    ours_linear = tf.function(batch_disguiser(noiseless))
    t_lin = statistics.median(timeit(lambda: ours_linear(images).numpy(), repeats))
    noise_only = tf.function(lambda im: _tf_uniform(tf.shape(im), spec.noise_level))
    t_noise = statistics.median(timeit(lambda: noise_only(images).numpy(), repeats))

    rng = np.random.default_rng(0)
    sub = x[:ref_images]
    t_b = statistics.median(timeit(lambda: disguise_batch(sub, spec, key.materials, rng), max(3, repeats // 2)))

    out = {
        "setting": name,
        "spec": spec.describe(),
        "batch": batch,
        "a_ours_img_per_s": batch / t_a,
        "b_numpy_per_image_img_per_s": len(sub) / t_b,
        "c_bare_matmul_img_per_s": batch / t_c,
    }
    out["a_without_noise_img_per_s"] = batch / t_lin
    out["noise_draw_only_img_per_s"] = batch / t_noise
    out["a_over_c"] = out["a_ours_img_per_s"] / out["c_bare_matmul_img_per_s"]
    out["a_without_noise_over_c"] = out["a_without_noise_img_per_s"] / out["c_bare_matmul_img_per_s"]
    out["a_over_b"] = out["a_ours_img_per_s"] / out["b_numpy_per_image_img_per_s"]
    out["ms_per_image_numpy"] = 1000 * t_b / len(sub)
    return out


def bench_fit(x, y, epochs, batch_size):
    """Epoch time of one simple CNN recipe fed three ways, interleaved epoch by epoch.

    "pre-disguised" trains on images disguised once beforehand: the same model
    on the same kind of data as "wrap", without the on-the-fly disguise. The
    wrap-vs-pre-disguised ratio is therefore the cost of `wrap` itself; the
    wrap-vs-plain ratio also includes any effect of the data's values on
    training speed.
    """
    spec = tfdisguise.Spec.create((28, 28, 1), 7, rmt="orthogonal", permute=True, noise=100)
    key = tfdisguise.Key.generate(spec)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    feeds = {
        "plain": (ds.prefetch(tf.data.AUTOTUNE), x[:2000].astype("float32")),
        "pre-disguised": (tf.data.Dataset.from_tensor_slices((tfdisguise.disguise(x, key), y)).batch(batch_size)
                          .prefetch(tf.data.AUTOTUNE), tfdisguise.disguise(x[:2000], key)),
        "wrap": (tfdisguise.wrap(ds, key), tfdisguise.disguise(x[:2000], key)),
    }
    runs = {}
    for name, (data, adapt) in feeds.items():
        keras.utils.set_random_seed(0)
        model = models.build("simple_cnn", (28, 28, 1), 10, adapt_data=adapt)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data, epochs=1, verbose=0)  # warm-up: tracing
        runs[name] = (model, data, [])
    # Interleaved, so that drift in machine load hits all feeds alike.
    for _ in range(epochs):
        for model, data, times in runs.values():
            t0 = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            times.append(time.perf_counter() - t0)
    med = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    return {
        "images": len(x),
        "batch_size": batch_size,
        "epochs_timed": epochs,
        "epoch_s_median": med,
        "epoch_s_all": {name: times for name, (_, _, times) in runs.items()},
        "wrap_vs_pre_disguised_pct": 100 * (med["wrap"] / med["pre-disguised"] - 1),
        "wrap_vs_plain_pct": 100 * (med["wrap"] / med["plain"] - 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", help=".npz with x (N,32,32,3) uint8, e.g. ../shared/data/cifar10/train.npz")
    parser.add_argument("--mnist", help="MNIST IDX pair (directory), e.g. ../shared/data/mnist")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ref-images", type=int, default=256, help="images for the slow per-image numpy path")
    parser.add_argument("--fit-images", type=int, default=8000)
    parser.add_argument("--fit-epochs", type=int, default=5)
    parser.add_argument("--fit-batch", type=int, default=128)
    parser.add_argument("--only", choices=("disguise", "fit"), help="run one part of the benchmark")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    if args.cifar:
        cifar = datasets.load(args.cifar).x[: args.batch]
    else:
        cifar = rng.integers(0, 256, (args.batch, 32, 32, 3), np.uint8)
    if args.mnist:
        mnist = datasets.load(args.mnist, limit=args.fit_images)
        mx, my = mnist.x, mnist.y
    else:
        mx = rng.integers(0, 256, (args.fit_images, 28, 28, 1), np.uint8)
        my = rng.integers(0, 10, args.fit_images)

    results = {
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__}",
        "data": {"cifar": args.cifar or "random", "mnist": args.mnist or "random"},
    }
    if args.only in (None, "disguise"):
        results["disguise"] = [
            bench_disguise("cifar", cifar, tfdisguise.Spec.create((32, 32, 3), 4, rmt="orthogonal", rmt_mode="vector",
                                                                  permute=True, noise=25),
                           args.batch, args.repeats, args.ref_images),
            bench_disguise("mnist", mx, tfdisguise.Spec.create((28, 28, 1), 7, rmt="orthogonal", rmt_mode="matrix",
                                                               permute=True, noise=100),
                           min(args.batch, len(mx)), args.repeats, args.ref_images),
        ]
    for r in results.get("disguise", []):
        print(f"[{r['setting']}] {r['spec']}, batch {r['batch']}: "
              f"(a) ours {r['a_ours_img_per_s']:,.0f} img/s | "
              f"(b) per-image numpy {r['b_numpy_per_image_img_per_s']:,.0f} img/s "
              f"({r['ms_per_image_numpy']:.2f} ms/img) | (c) bare matmul {r['c_bare_matmul_img_per_s']:,.0f} img/s "
              f"=> (a)/(c) = {r['a_over_c']:.2f} (target >= 0.5), "
              f"(a)/(b) = {r['a_over_b']:.0f} (target >= 50)", flush=True)
        print(f"    breakdown: ours without the noise step {r['a_without_noise_img_per_s']:,.0f} img/s "
              f"(= {r['a_without_noise_over_c']:.2f} x bare matmul); "
              f"drawing the noise alone {r['noise_draw_only_img_per_s']:,.0f} img/s",
              flush=True)
    if args.only in (None, "fit"):
        fit = bench_fit(mx, my, args.fit_epochs, args.fit_batch)
        results["fit"] = fit
        med = fit["epoch_s_median"]
        print(f"[fit] simple_cnn, {fit['images']} MNIST-size images, batch {fit['batch_size']}, medians of "
              f"{fit['epochs_timed']} interleaved epochs: plain {med['plain']:.2f} s, "
              f"pre-disguised {med['pre-disguised']:.2f} s, "
              f"through wrap {med['wrap']:.2f} s => wrap adds {fit['wrap_vs_pre_disguised_pct']:+.1f}% "
              "vs pre-disguised "
              f"(target <= 5%), {fit['wrap_vs_plain_pct']:+.1f}% vs plain")
        every = "; ".join(f"{k} {[round(t, 2) for t in v]}" for k, v in fit["epoch_s_all"].items())
        print("    every epoch (s): " + every)
    print(results["hardware"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
