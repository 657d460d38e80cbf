"""Scale-out: bulk disguising on Apache Beam with 1 and 2 worker processes, side by side in one run.

Each round runs `tfdisguise.beam.disguise_on_beam` on the same source and key
with the DirectRunner in multi-processing mode, first with one worker, then
with two (`direct_num_workers`), and times the whole call (pipeline start,
workers loading TensorFlow, the key and the source, disguising, shard writing,
manifest). It reports the median wall time of each and the speed-up, which
issue 8 wants at >= 1.6x on 2 cores. Shards go to a temporary directory and are
removed after each run.

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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10/train.npz", help="a source datasets.load reads")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=2500)
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import logging

    from tfdisguise import Key, Spec, datasets
    from tfdisguise.beam import disguise_on_beam

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    data = datasets.load(args.data, limit=args.limit)
    work = tempfile.mkdtemp(prefix="scale_out-")
    key_path = os.path.join(work, "key.json")
    Key.generate(Spec.recommended(data.image_shape)).save(key_path)
    times = {1: [], 2: []}
    try:
        for r in range(args.rounds):
            for workers in (1, 2):
                out = os.path.join(work, f"out-{workers}-{r}")
                started = time.perf_counter()
                manifest = disguise_on_beam(args.data, key_path, out, limit=args.limit, shard_size=args.shard_size,
                                            runner="DirectRunner",
                                            pipeline_options=f"direct_num_workers={workers},"
                                                             "direct_running_mode=multi_processing")
                times[workers].append(time.perf_counter() - started)
                assert manifest["count"] == len(data)
                shutil.rmtree(out)
                print(f"round {r + 1}: {workers} worker(s) {times[workers][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    result = {"images": len(data), "image_shape": list(data.image_shape), "shard_size": args.shard_size,
              "spec": Spec.recommended(data.image_shape).describe(), "rounds": args.rounds,
              "seconds_1_worker": times[1], "seconds_2_workers": times[2], "median_1": one, "median_2": two,
              "speedup": one / two, "images_per_s_1": len(data) / one, "images_per_s_2": len(data) / two,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    print(f"{len(data)} images: 1 worker {one:.1f} s ({len(data) / one:,.0f} img/s), 2 workers {two:.1f} s "
          f"({len(data) / two:,.0f} img/s): {one / two:.2f}x (medians of {args.rounds})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
