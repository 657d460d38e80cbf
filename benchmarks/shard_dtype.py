"""Does storing disguised shards as float16 cost accuracy? (issue 11: CIFAR shards are 24.7 MB per 2,000 images.)

For each data set and each of `--keys` fresh keys, the owner's training images are exported twice with
`export_disguised`, as float32 and as float16 shards, and the same model with the same seed trains on each,
loaded back with `load_disguised`; the validation images are disguised once and shared by both. Reports the
shard bytes, the largest float16 rounding error against the noise's standard deviation, and the validation
accuracy of both (mean +- sd over keys), side by side.

Usage (the figures in docs/RESULTS.md):
  python benchmarks/shard_dtype.py --data ../shared/data --keys 3 --out benchmarks/out/shard_dtype
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

SETS = {
    # name: (source under --data, spec arguments, training images, validation images, epochs)
    "mnist": ("mnist", {"block_size": 7, "noise": 100}, 4000, 2000, 4),
    "cifar10": ("cifar10/train.npz", {"block_size": 2, "rmt_mode": "matrix", "permute": False, "noise": 25}, 5000,
                2000, 4),
}


def shard_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".tfrecord"))


def run_set(name: str, data_dir: str, keys: int, log) -> dict:
    import tensorflow as tf

    from tfdisguise import Key, Spec, datasets, disguise, export_disguised, load_disguised
    from tfdisguise.train import TrainConfig, fit

    source, spec_args, n_train, n_val, epochs = SETS[name]
    train = datasets.load(os.path.join(data_dir, source), split="train", validation_fraction=0.2, seed=0,
                          limit=n_train)
    val = datasets.load(os.path.join(data_dir, source), split="validation", validation_fraction=0.2, seed=0)
    val_x, val_y = val.x[:n_val], val.y[:n_val]
    spec = Spec.create(train.image_shape, **spec_args)
    rows = []
    for k in range(keys):
        key = Key.generate(spec)
        val_d = disguise(val_x, key)
        row = {"key": key.fingerprint}
        with tempfile.TemporaryDirectory() as tmp:
            arrays = {}
            for dtype in ("float32", "float16"):
                out = os.path.join(tmp, dtype)
                export_disguised(train.to_dataset(), key, out, dtype=dtype, progress=False)
                row[f"{dtype}_bytes"] = shard_bytes(out)
                x = np.stack([image.numpy() for image, _ in load_disguised(out, key=key)])
                arrays[dtype] = x
                config = TrainConfig(model="simple_cnn", epochs=epochs, seed=k)
                ds = load_disguised(out, key=key).shuffle(n_train, seed=k).batch(config.batch_size)
                val_ds = tf.data.Dataset.from_tensor_slices((val_d, val_y)).batch(256)
                _, history = fit(ds, val_ds, config=config, progress=False, input_shape=spec.image_shape,
                                 num_classes=int(train.num_classes), adapt_data=x[:2048],
                                 steps_per_epoch=-(-len(train) // config.batch_size), spec=spec)
                row[f"{dtype}_accuracy"] = float(history["val_accuracy"][-1])
                tf.keras.backend.clear_session()
            # Rounding error of the float16 shards, measured on the float32 export's values.
            x32 = arrays["float32"]
            row["float16_max_rounding"] = float(np.abs(x32.astype(np.float16).astype(np.float32) - x32).max())
            row["noise_sd"] = spec.noise_level / np.sqrt(12)  # U[0, N] noise
            row["float16_max_abs"] = float(np.abs(arrays["float16"]).max())
        log(f"{name} key {k + 1}/{keys}: float32 {row['float32_accuracy']:.4f} ({row['float32_bytes']:,} B), "
            f"float16 {row['float16_accuracy']:.4f} ({row['float16_bytes']:,} B), float16 rounding <= "
            f"{row['float16_max_rounding']:.3f} (noise sd {row['noise_sd']:.1f})")
        rows.append(row)
    return {"set": name, "spec": spec.describe(), "train_images": len(train), "validation_images": len(val_x),
            "epochs": epochs, "runs": rows}


def summarize(result: dict) -> str:
    def ms(values):
        return f"{100 * statistics.mean(values):.2f}% ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 \
            else f"{100 * values[0]:.2f}%"

    runs = result["runs"]
    a32 = [r["float32_accuracy"] for r in runs]
    a16 = [r["float16_accuracy"] for r in runs]
    ratio = statistics.mean(r["float16_bytes"] / r["float32_bytes"] for r in runs)
    return (f"| {result['set']} ({result['spec']}) | {ms(a32)} | {ms(a16)} | "
            f"{100 * statistics.mean(b - a for a, b in zip(a32, a16)):+.2f} pts | "
            f"{runs[0]['float32_bytes'] / result['train_images'] / 1024:.1f} KiB | {ratio:.2f} | "
            f"{max(r['float16_max_rounding'] for r in runs):.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sets", default="mnist,cifar10")
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/out/shard_dtype")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    results = [run_set(name, args.data, args.keys, log) for name in args.sets.split(",")]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = ["| data (disguise) | float32 shards | float16 shards | float16 - float32 | float32 bytes per image "
             "| float16 / float32 bytes | largest float16 rounding |", "|---|---|---|---|---|---|---|"]
    lines += [summarize(r) for r in results]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
