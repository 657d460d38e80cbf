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

Image-size sweep (`--only sweep`): for image sizes 28..224, block sizes 4..32
(where they divide) and both RMT modes (+ permutation + noise 25), one fresh
process per setting reports `wrap` images/s and MB/s (uint8 input), the limit of
the same shapes measured side by side in the same process (one bare batched
matmul of the plan's shapes on inputs already in its layout, plus the noise
draw; the faster of calling it directly and running it through tf.data like
`wrap`), peak RSS, keygen + plan time and the spec's `cost()`. Settings over the
plan-memory cap are listed as refused. It writes sweep.json and sweep.png
(throughput against image size) to --out-dir and prints a Markdown table:

  python benchmarks/disguise_speed.py --only sweep --out-dir docs/results/large \
      [--sizes 28,32,64,128,224] [--blocks 4,8,16,32] [--modes matrix,vector] \
      [--sweep-batch 32] [--rounds 5] [--round-seconds 0.3] [--max-matrix-mb 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tfdisguise
from tfdisguise import datasets, models
from tfdisguise.data import _tf_uniform_source, batch_disguiser
from tfdisguise.mechanisms.reference import disguise_batch

# The noise draw the disguise itself uses (fresh per call), for the limit and the noise-only timing.
_tf_uniform = _tf_uniform_source()


def timeit(fn, repeats: int) -> list[float]:
    fn()  # warm-up: tracing and allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bare_matmul(plan, batch):
    """A tf.function running the plan's batched matmuls alone, on random inputs already in their layout.

    [t, N, d] @ [t, d, d] for dense (vector-mode) matrices, [t, N*bh*C, bw] @ [t, bw, bw]
    for row-form (matrix-mode) ones; it reads the plan's own matrix tensors, so
    it adds no copy of them to the process's memory.
    """
    pairs = []
    for op in plan.ops:
        if not op.linear or op.matrices is None:
            continue
        t = len(op.matrices)
        shape = (t, batch * op.rows[0] * op.rows[2], op.rows[1]) if op.rows else (t, batch, op.matrices.shape[1])
        pairs.append((tf.random.uniform(shape, 0, 255), op._hot("matrices", "float32")))
    return tf.function(lambda: [tf.matmul(x, m) for x, m in pairs])


def bench_disguise(name, x, spec, batch, repeats, ref_images):
    key = tfdisguise.Key.generate(spec)
    plan = key.plan
    images = tf.constant(x[:batch])

    ours = tf.function(batch_disguiser(key))  # exactly what wrap() maps over batches
    t_a = statistics.median(timeit(lambda: ours(images).numpy(), repeats))

    bare = bare_matmul(plan, batch)
    t_c = statistics.median(timeit(lambda: [y.numpy() for y in bare()], repeats))

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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def sweep_one(size: int, block: int, mode: str, batch: int, rounds: int, round_seconds: float, noise: float) -> dict:
    """One setting, in this (fresh) process: `wrap` against the same-shapes limit, interleaved round by round."""
    rss_start = _rss_bytes()
    spec = tfdisguise.Spec.create((size, size, 3), block, rmt="orthogonal", rmt_mode=mode, noise=noise)
    t0, cpu0 = time.perf_counter(), time.process_time()
    key = tfdisguise.Key.generate(spec)
    plan = key.plan
    keygen_s, keygen_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    source = tf.data.Dataset.from_tensors(x)

    def wrap_rate(k):
        # A fresh, finite pipeline per round: nothing runs ahead into the next timing.
        it = iter(tfdisguise.wrap(source.repeat(k + 1), key))
        next(it)
        t = time.perf_counter()
        for _ in range(k):
            next(it)
        return k * batch / (time.perf_counter() - t)

    t0 = time.perf_counter()
    wrap_rate(2)  # traces and compiles
    first_call_s = time.perf_counter() - t0
    # The disguise's own peak: key, plan and `wrap`, before the limit builds its matmuls beside them.
    disguise_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    matmuls = bare_matmul(plan, batch)
    shape = (batch, size, size, 3)
    limit_fn = tf.function(lambda: (matmuls(), _tf_uniform(shape, noise)))

    def limit_rate(k):
        # The limit's best of two ways: called directly, one batch after another,
        # and through the same tf.data machinery as `wrap` (parallel calls, prefetch),
        # which lets two batches share the two cores as `wrap` does.
        t = time.perf_counter()
        for _ in range(k):
            limit_fn()
        direct = k * batch / (time.perf_counter() - t)
        pipeline = tf.data.Dataset.range(k + 1).map(lambda _: limit_fn(), num_parallel_calls=tf.data.AUTOTUNE)
        it = iter(pipeline.prefetch(tf.data.AUTOTUNE))
        next(it)
        t = time.perf_counter()
        for _ in range(k):
            next(it)
        return max(direct, k * batch / (time.perf_counter() - t))

    limit_fn()
    t0 = time.perf_counter()
    limit_fn()
    k = int(min(200, max(3, round(round_seconds / max(time.perf_counter() - t0, 1e-6)))))
    wraps, limits = [], []
    for _ in range(rounds):
        wraps.append(wrap_rate(k))
        limits.append(limit_rate(k))
    wrap_med, limit_med = statistics.median(wraps), statistics.median(limits)
    cost = spec.cost()
    return {
        "size": size, "block": block, "mode": mode, "batch": batch, "spec": spec.describe(),
        "wrap_img_per_s": wrap_med, "wrap_mb_per_s": wrap_med * size * size * 3 / 1e6,
        "limit_img_per_s": limit_med, "wrap_over_limit": wrap_med / limit_med,
        "wrap_all": wraps, "limit_all": limits, "batches_per_round": k,
        "keygen_plan_s": keygen_s, "keygen_plan_cpu_s": keygen_cpu_s, "first_call_s": first_call_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_at_start_bytes": rss_start,
        "peak_rss_disguise_bytes": disguise_peak,
        "plan_bytes": cost.plan_bytes, "matrix_bytes": cost.matrix_bytes, "flops_per_image": cost.flops_per_image,
    }


def sweep(args) -> list[dict]:
    """Every setting of the sweep, each in its own process (so that peak memory is its own)."""
    rows = []
    for size in args.sizes:
        for block in args.blocks:
            if size % block or block > size:
                continue
            for mode in args.modes:
                try:
                    spec = tfdisguise.Spec.create((size, size, 3), block, rmt_mode=mode, noise=args.noise)
                except tfdisguise.spec.PlanTooLargeError:
                    cost = tfdisguise.Spec.create((size, size, 3), block, rmt_mode=mode, noise=args.noise,
                                                  max_plan_bytes=None).cost()
                    row = {"size": size, "block": block, "mode": mode, "refused": True,
                           "plan_bytes": cost.plan_bytes, "flops_per_image": cost.flops_per_image}
                    print(f"{size}x{size}x3 block {block} {mode}: refused by Spec.create ({cost.summary()})",
                          flush=True)
                    rows.append(row)
                    continue
                cost = spec.cost()
                if args.max_matrix_mb is not None and cost.matrix_bytes > args.max_matrix_mb * 1e6:
                    # Bounds the run: such keys take minutes of QRs (d = 3072 at block 32).
                    rows.append({"size": size, "block": block, "mode": mode, "skipped": True,
                                 "plan_bytes": cost.plan_bytes, "flops_per_image": cost.flops_per_image})
                    print(f"{size}x{size}x3 block {block} {mode}: skipped (--max-matrix-mb; {cost.summary()})",
                          flush=True)
                    continue
                cmd = [sys.executable, __file__, "--one", f"{size},{block},{mode}", "--sweep-batch",
                       str(args.sweep_batch), "--rounds", str(args.rounds), "--round-seconds",
                       str(args.round_seconds), "--noise", str(args.noise)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{spec.describe()} at {size}: {done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{size}x{size}x3 block {block} {mode}: wrap {row['wrap_img_per_s']:,.0f} img/s = "
                      f"{row['wrap_over_limit']:.2f}x the limit ({row['limit_img_per_s']:,.0f} img/s), "
                      f"peak {row['peak_rss_bytes'] / 1e9:.2f} GB ({_disguise_peak(row)} before the limit's own "
                      f"matmuls), keygen+plan {row['keygen_plan_s']:.1f} s",
                      flush=True)
                rows.append(row)
    return rows


def _disguise_peak(row: dict) -> str:
    peak = row.get("peak_rss_disguise_bytes")  # absent from sweeps measured before it was recorded
    return "-" if peak is None else f"{peak / 1e9:.2f} GB"


def sweep_table(rows: list[dict]) -> str:
    out = ["| image | block | mode | plan (est.) | MFLOP/img | keygen + plan: wall (CPU) | `wrap` img/s | MB/s | "
           "limit img/s | wrap / limit | peak RSS: disguise (whole run) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['size']}x{r['size']}x3 | {r['block']} | {r['mode']} | {r['plan_bytes'] / 1e6:,.1f} MB | " \
               f"{r['flops_per_image'] / 1e6:,.1f} |"
        if r.get("refused"):
            out.append(head + " refused by `Spec.create` (over the 2 GB cap) | | | | | | |")
            continue
        if r.get("skipped"):
            out.append(head + " not run (`--max-matrix-mb`, to bound the run's time) | | | | | | |")
            continue
        out.append(head + f" {r['keygen_plan_s']:.2f} s ({r['keygen_plan_cpu_s']:.2f} s) | "
                          f"{r['wrap_img_per_s']:,.0f} | {r['wrap_mb_per_s']:,.1f} | "
                          f"{r['limit_img_per_s']:,.0f} | **{r['wrap_over_limit']:.2f}** | "
                          f"{_disguise_peak(r)} ({r['peak_rss_bytes'] / 1e9:.2f} GB) |")
    return "\n".join(out)


def sweep_figure(rows: list[dict]):
    """Throughput against image size: one panel per mode, one colour per block size; dashed: the limit."""
    from tfdisguise.plots import new_figure

    modes = sorted({r["mode"] for r in rows})
    fig, axes = new_figure(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    blocks = sorted({r["block"] for r in rows})
    colours = dict(zip(blocks, ["C0", "C1", "C2", "C3", "C4", "C5"]))
    for ax, mode in zip(axes[0], modes):
        for block in blocks:
            ran = sorted((r for r in rows if r["mode"] == mode and r["block"] == block and "wrap_img_per_s" in r),
                         key=lambda r: r["size"])
            if not ran:
                continue
            sizes = [r["size"] for r in ran]
            ax.plot(sizes, [r["wrap_img_per_s"] for r in ran], "o-", color=colours[block], label=f"block {block}")
            ax.plot(sizes, [r["limit_img_per_s"] for r in ran], "--", color=colours[block], alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({r["size"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("image side (HxWx3)")
        ax.set_ylabel("images/s")
        ax.set_title(f"{mode}-mode RMT + permutation + noise: wrap (solid), limit (dashed)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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
    parser.add_argument("--only", choices=("disguise", "fit", "sweep"), help="run one part of the benchmark "
                        "(the image-size sweep runs only when asked for)")
    parser.add_argument("--json", help="also write the results here")
    ints = lambda text: [int(v) for v in text.split(",")]
    parser.add_argument("--sizes", type=ints, default=[28, 32, 64, 128, 224], help="sweep: image sides")
    parser.add_argument("--blocks", type=ints, default=[4, 8, 16, 32], help="sweep: block sizes")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=["matrix", "vector"], help="sweep: RMT modes")
    parser.add_argument("--sweep-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="sweep: interleaved timing rounds per setting")
    parser.add_argument("--round-seconds", type=float, default=0.3, help="sweep: about this long per timing")
    parser.add_argument("--noise", type=float, default=25.0, help="sweep: noise level")
    parser.add_argument("--out-dir", default="benchmarks/out/sweep", help="sweep: where sweep.json/.png go")
    parser.add_argument("--max-matrix-mb", type=float, help="sweep: skip settings with more float32 matrices")
    parser.add_argument("--replot", action="store_true", help="sweep: redraw sweep.png and reprint the table "
                        "from --out-dir/sweep.json, measuring nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SIZE,BLOCK,MODE: one sweep setting, in this process
    args = parser.parse_args(argv)

    if args.one:
        size, block, mode = args.one.split(",")
        row = sweep_one(int(size), int(block), mode, args.sweep_batch, args.rounds, args.round_seconds, args.noise)
        print(json.dumps(row))
        return 0
    if args.only == "sweep" and args.replot:
        from tfdisguise.plots import save_figure

        with open(os.path.join(args.out_dir, "sweep.json")) as f:
            rows = json.load(f)["rows"]
        save_figure(sweep_figure(rows), os.path.join(args.out_dir, "sweep.png"))
        print(sweep_table(rows))
        return 0
    if args.only == "sweep":
        t0 = time.perf_counter()
        rows = sweep(args)
        os.makedirs(args.out_dir, exist_ok=True)
        result = {
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, TF {tf.__version__}, "
                        f"Keras {keras.__version__}",
            "load_average_at_end": os.getloadavg(), "seconds": time.perf_counter() - t0,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "rows": rows,
        }
        with open(os.path.join(args.out_dir, "sweep.json"), "w") as f:
            json.dump(result, f, indent=2)
        from tfdisguise.plots import save_figure

        save_figure(sweep_figure(rows), os.path.join(args.out_dir, "sweep.png"))
        print(sweep_table(rows))
        print(f"{result['hardware']}; {result['seconds']:.0f} s; load average at the end {os.getloadavg()}")
        return 0

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
