"""Scale-out: bulk disguising on Apache Beam with 1 and 2 worker processes, side by side in one run.

Each round runs `tfdisguise.beam.disguise_on_beam` on the same source and key
with the DirectRunner in multi-processing mode, first with one worker, then
with two (`direct_num_workers`), beside the in-process `export_disguised` of the
same images (loading the source included). It times the whole call (the driver loading
the source to count it, pipeline start, workers loading TensorFlow, the key and
the source, disguising, shard writing, manifest), and, separately, the steady
phase: the rate at which shards are completed between the third and the last
(from the shards' modification times), which is what a long job runs at once
the fixed start-up cost is paid. It reports medians of each and the speed-ups,
which issue 8 wants at >= 1.6x on 2 cores. Shards go to a temporary directory
and are removed after each run.

Usage (the figure in docs/RESULTS.md):
  python benchmarks/scale_out.py --data ../shared/data/cifar10/train.npz --rounds 3 --shard-size 2500 \\
      [--limit 50000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10/train.npz", help="a source datasets.load reads")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=2500)
    p.add_argument("--part", choices=("beam", "stream", "mirrored"), default="beam")
    p.add_argument("--epochs", type=int, default=4, help="--part stream: epochs on each side")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def _epoch_times(model, ds, epochs, steps=None):
    import keras

    marks = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            marks.append([time.perf_counter()])

        def on_epoch_end(self, epoch, logs=None):
            marks[-1].append(time.perf_counter())

    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[Clock()])
    return [end - begin for begin, end in marks]


def stream_part(args) -> dict:
    """Epoch times of the same training on local shards and on a stream the owner pushes (`tfdisguise stream`).

    The owner pushes `--epochs` epochs (fresh noise each) to a directory in a second process while the trainer
    reads them epoch by epoch; the owner's own rate (images disguised and written per second) is reported too.
    """
    import subprocess

    from tfdisguise import Key, Spec, datasets, export_disguised, load_disguised, models, stream
    from tfdisguise.recipe import TrainConfig, compile_model
    from tfdisguise.shards import read_manifest

    work = tempfile.mkdtemp(prefix="scale_out_stream-")
    try:
        train = datasets.load(args.data, "train", validation_fraction=0.2, seed=0)
        key_path = os.path.join(work, "key.json")
        key = Key.generate(Spec.recommended(train.image_shape))
        key.save(key_path)
        config = TrainConfig(epochs=args.epochs)
        export_disguised(train.to_dataset(), key, os.path.join(work, "shards"), progress=False)
        shards = load_disguised(os.path.join(work, "shards")).shuffle(10000).batch(config.batch_size).prefetch(2)
        adapt = np.stack([x for x, _ in load_disguised(os.path.join(work, "shards")).take(2048).as_numpy_iterator()])
        steps = -(-len(train) // config.batch_size)

        def model():
            m = models.build("simple_cnn", train.image_shape, 10, adapt_data=adapt)
            compile_model(m, config, steps)
            return m

        local = _epoch_times(model(), shards, args.epochs)
        exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
        out = os.path.join(work, "stream")
        started = time.perf_counter()
        proc = subprocess.Popen([exe, "stream", "--key", key_path, "--input", args.data, "--validation-fraction",
                                 "0.2", "--out", out, "--epochs", str(args.epochs), "--batch-size",
                                 str(config.batch_size)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            train_stream = stream.read(out, batch_size=config.batch_size, timeout=600)[0]
            streamed = _epoch_times(model(), train_stream, args.epochs, steps=steps)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        pushed = [read_manifest(stream.epoch_dir(out, e))["seconds"] for e in range(args.epochs)]
        owner_rate = len(train) / statistics.median(pushed)
        print(f"owner push: {owner_rate:,.0f} img/s (median of {args.epochs} epochs; "
              f"{time.perf_counter() - started:.1f} s in all, start-up included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(local[1:]), statistics.median(streamed[1:])
    print(f"epoch time (median of epochs 2..{args.epochs}): local shards {a:.2f} s, stream {b:.2f} s: "
          f"stream / shards {b / a:.2f} (target <= 1.10)")
    return {"images": len(train), "epochs": args.epochs, "local_epoch_s": local, "stream_epoch_s": streamed,
            "median_local": a, "median_stream": b, "ratio": b / a, "owner_push_s_by_epoch": pushed,
            "owner_push_images_per_s": owner_rate, "load_average": os.getloadavg()}


def mirrored_part(args) -> dict:
    """`tfdisguise train` on the same images and key with one device and with `mirrored` on 2 logical CPUs."""
    import subprocess

    from tfdisguise import Key, Spec, datasets

    work = tempfile.mkdtemp(prefix="scale_out_mirrored-")
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    try:
        # On the fly from the plain images and the key (`train --strategy mirrored` refuses shards for now).
        data = datasets.load(args.data)
        key_path = os.path.join(work, "key.json")
        Key.generate(Spec.recommended(data.image_shape)).save(key_path)
        out = {}
        for name, flags in (("one device", []), ("mirrored, 2 logical CPUs", ["--strategy", "mirrored",
                                                                             "--cpu-devices", "2"])):
            run = os.path.join(work, name.split(",")[0].replace(" ", "_"))
            subprocess.run([exe, "train", "--input", args.data, "--key", key_path, "--epochs", str(args.epochs),
                            "--out", run, *flags], check=True, capture_output=True)
            with open(os.path.join(run, "history.json")) as f:
                history = json.load(f)
            steps = args.epochs * -(-history["train_images"] // 128)
            out[name] = {"seconds": history["seconds"], "steps_per_s": steps / history["seconds"],
                         "val_accuracy": history["val_accuracy"]}
            print(f"{name}: {history['seconds']:.1f} s for {args.epochs} epochs ({steps / history['seconds']:.1f} "
                  f"steps/s, model build included), validation accuracy {history['val_accuracy']:.4f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.part in ("stream", "mirrored"):
        result = stream_part(args) if args.part == "stream" else mirrored_part(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    import logging

    from tfdisguise import Key, Spec, datasets, export_disguised
    from tfdisguise.beam import disguise_on_beam

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    data = datasets.load(args.data, limit=args.limit)
    work = tempfile.mkdtemp(prefix="scale_out-")
    key_path = os.path.join(work, "key.json")
    Key.generate(Spec.recommended(data.image_shape)).save(key_path)
    times, steady, single = {1: [], 2: []}, {1: [], 2: []}, []
    try:
        for r in range(args.rounds):
            # The in-process export of the same images, what `tfdisguise disguise` without --runner does.
            out = os.path.join(work, f"single-{r}")
            started = time.perf_counter()
            export_disguised(datasets.load(args.data, limit=args.limit).to_dataset(), Key.load(key_path), out,
                             shard_size=args.shard_size, progress=False)
            single.append(time.perf_counter() - started)
            shutil.rmtree(out)
            print(f"round {r + 1}: in-process export_disguised {single[-1]:.1f} s", flush=True)
            for workers in (1, 2):
                out = os.path.join(work, f"out-{workers}-{r}")
                started = time.perf_counter()
                manifest = disguise_on_beam(args.data, key_path, out, limit=args.limit, shard_size=args.shard_size,
                                            runner="DirectRunner",
                                            pipeline_options=f"direct_num_workers={workers},"
                                                             "direct_running_mode=multi_processing")
                times[workers].append(time.perf_counter() - started)
                assert manifest["count"] == len(data)
                done = sorted(os.path.getmtime(os.path.join(out, s["file"])) for s in manifest["shards"])
                if len(done) >= 5:  # shards 3..n, each shard_size images (the last may be short: left out)
                    steady[workers].append((len(done) - 4) * args.shard_size / (done[-2] - done[2]))
                shutil.rmtree(out)
                print(f"round {r + 1}: {workers} worker(s) {times[workers][-1]:.1f} s"
                      + (f", steady {steady[workers][-1]:,.0f} img/s" if steady[workers] else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    result = {"images": len(data), "image_shape": list(data.image_shape), "shard_size": args.shard_size,
              "spec": Spec.recommended(data.image_shape).describe(), "rounds": args.rounds,
              "seconds_1_worker": times[1], "seconds_2_workers": times[2], "median_1": one, "median_2": two,
              "speedup": one / two, "images_per_s_1": len(data) / one, "images_per_s_2": len(data) / two,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "steady_images_per_s_1": steady[1], "steady_images_per_s_2": steady[2],
              "seconds_in_process": single, "median_in_process": statistics.median(single)}
    print(f"in-process export_disguised: {statistics.median(single):.1f} s "
          f"({len(data) / statistics.median(single):,.0f} img/s, loading included)")
    print(f"{len(data)} images: 1 worker {one:.1f} s ({len(data) / one:,.0f} img/s), 2 workers {two:.1f} s "
          f"({len(data) / two:,.0f} img/s): {one / two:.2f}x end to end (medians of {args.rounds})")
    if steady[1] and steady[2]:
        s1, s2 = statistics.median(steady[1]), statistics.median(steady[2])
        result.update(steady_median_1=s1, steady_median_2=s2, steady_speedup=s2 / s1)
        print(f"steady phase: 1 worker {s1:,.0f} img/s, 2 workers {s2:,.0f} img/s: {s2 / s1:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
