"""Draws the pictures of docs/RESULTS.md that no benchmark draws itself, from the JSON files the benchmarks wrote.

Run from the repository root: `python docs/results/summary_figures.py`. It reads only files under docs/results/
and writes serving/throughput.png, scale_out/scale_out.png and shard_dtype/accuracy.png beside them.
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*parts):
    with open(os.path.join(HERE, *parts), encoding="utf-8") as f:
        return json.load(f)


def serving():
    """Requests per second against concurrent clients, batching off and on, at both intra-op settings."""
    runs = read("serving", "throughput_resnet20_threads.json")["throughput"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix, threads in (("", "default intra-op threads"), ("intra1_", "--tensorflow_intra_op_parallelism=1")):
        for mode, style in (("no_batching", "--"), ("batching", "-")):
            points = sorted((r["clients"], r["requests_per_s"]) for name, r in runs.items()
                            if name.startswith(prefix + mode + "_") and (prefix or not name.startswith("intra1_")))
            ax.plot(*zip(*points), style, marker="o", label=f"{mode.replace('_', ' ')}, {threads}")
    ax.set(xscale="log", xlabel="concurrent batch-1 clients", ylabel="requests/s",
           title="ResNet-20 on 2 CPU cores, embedded server, gRPC")
    ax.set_xticks([1, 4, 16], ["1", "4", "16"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "serving", "throughput.png"), dpi=100)


def scale_out():
    """Beam's whole-call times per round, and the stream's epoch times against local shards."""
    beam, stream = read("scale_out", "beam.json"), read("scale_out", "stream.json")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    rounds = range(1, len(beam["seconds_1_worker"]) + 1)
    left.plot(rounds, beam["seconds_1_worker"], marker="o", label="Beam, 1 worker")
    left.plot(rounds, beam["seconds_2_workers"], marker="o", label="Beam, 2 workers")
    left.set(xlabel="round", ylabel="seconds for 50,000 CIFAR-10 images", ylim=(0, None), xticks=list(rounds),
             title="bulk disguising (whole call)")
    left.legend(fontsize=8)
    epochs = range(1, len(stream["local_epoch_s"]) + 1)
    right.plot(epochs, stream["local_epoch_s"], marker="o", label="local shards")
    right.plot(epochs, stream["stream_epoch_s"], marker="o", label="stream")
    right.set(xlabel="epoch", ylabel="seconds per epoch", ylim=(0, None), xticks=list(epochs),
              title="training on 8,000 MNIST images")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "scale_out", "scale_out.png"), dpi=100)


def shard_dtype():
    """Each key's accuracy on float32 against float16 shards."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for data in read("shard_dtype", "results.json"):
        ax.scatter([r["float32_accuracy"] for r in data["runs"]], [r["float16_accuracy"] for r in data["runs"]],
                   label=data["set"])
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlim=(0.2, 1), ylim=(0.2, 1), xlabel="accuracy, float32 shards", ylabel="accuracy, float16 shards",
           title="one point per key (4 epochs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "shard_dtype", "accuracy.png"), dpi=100)


if __name__ == "__main__":
    serving()
    scale_out()
    shard_dtype()
