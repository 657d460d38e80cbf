"""Streaming through the tf.data service: the owner's process holds the key, the trainer's process never does."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import two_classes
from test_leaks import leaks

from tfdisguise import Key, cli, stream
from tfdisguise.datasets import ImageData

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def test_owner_streams_and_a_keyless_trainer_trains(tmp_path):
    owner_dir, trainer_dir = tmp_path / "owner", tmp_path / "cloud"
    owner_dir.mkdir()
    trainer_dir.mkdir()
    np.savez(owner_dir / "data.npz", **dict(zip("xy", two_classes(n=320))))
    key_path = str(owner_dir / "key.json")
    assert cli.main(["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--rmt", "orthogonal", "--noise", "10",
                     "--out", key_path]) == 0
    owner = subprocess.Popen(
        [sys.executable, "-m", "tfdisguise.cli", "stream", "--key", key_path, "--input", str(owner_dir / "data.npz"),
         "--dispatcher-port", "0", "--workers", "2", "--dataset-id", "tiny", "--batch-size", "32",
         "--work-dir", str(owner_dir / "journal")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        announced = json.loads(owner.stdout.readline())
        assert announced["dataset_id"] == "tiny" and announced["images"] == 256
        assert announced["element_spec"] == {"image": ["float32", [None, 8, 8, 1]], "label": ["int64", [None]]}
        assert oct(os.stat(owner_dir / "journal").st_mode & 0o777) == "0o700"
        # The trainer runs in its own directory, with no key file and no key path.
        done = subprocess.run(
            [sys.executable, "-m", "tfdisguise.cli", "train", "--stream", announced["dispatcher"], "--dataset-id",
             "tiny", "--epochs", "3", "--out", "run"],
            cwd=trainer_dir, capture_output=True, text=True, timeout=600, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        owner.terminate()
        _, err = owner.communicate(timeout=60)
    assert owner.returncode == 0 and "stream stopped" in err
    history = json.loads((trainer_dir / "run" / "history.json").read_text())
    assert history["disguised"] and history["train_images"] == 256 and history["val_images"] == 64
    assert history["val_accuracy"] >= 0.9, history["history"]
    key = Key.load(key_path)
    assert json.loads((trainer_dir / "run" / "disguise.json").read_text())["fingerprint"] == key.fingerprint
    # Everything the trainer wrote or printed, scanned for the key's material.
    blobs = [(done.stdout + done.stderr).encode()]
    for root, _, files in os.walk(trainer_dir):
        blobs += [pathlib.Path(root, f).read_bytes() for f in files]
    assert not any(leaks(blob, key) for blob in blobs)


def test_each_epoch_draws_fresh_noise_and_bad_names_are_refused():
    x, y = two_classes(n=64)
    key = Key.generate(image_shape=(8, 8, 1), block_size=4, noise=10)
    with stream.serve(key, ImageData(x, y), port=0, name="fresh", batch_size=64, shuffle=1) as service:
        train, val, info = stream.read(service.target, "fresh")
        assert val is None and info["count"] == 64
        batches = iter(train)
        first, second = next(batches)[0].numpy(), next(batches)[0].numpy()
        # Same images (shuffle buffer 1 keeps their order), different noise.
        assert not np.allclose(first, second) and np.abs(first - second).max() <= 2 * 10 + 1e-3
        with pytest.raises(ConnectionError, match="No tfdisguise stream 'other'"):
            stream.read(service.target, "other")
    with pytest.raises(ValueError, match="`name` must be 1-100 letters"):
        stream.serve(key, ImageData(x, y), name="a b")
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        stream.read("localhost:5050", "fresh")


def test_a_worker_restart_mid_epoch_does_not_stop_the_reader():
    x, y = two_classes(n=128)
    key = Key.generate(image_shape=(8, 8, 1), block_size=4, noise=10)
    # One worker: after the restart, every batch must come from the new worker.
    with stream.serve(key, ImageData(x, y), port=0, workers=1, name="restart", batch_size=16) as service:
        train, _, info = stream.read(service.target, "restart")
        batches = iter(train)
        before = [next(batches) for _ in range(3)]  # mid-epoch: an epoch is 8 batches
        old = service.workers[0]
        new = service.restart_worker(0)
        assert new is not old and service.workers[0] is new
        after = [next(batches) for _ in range(24)]  # three more epochs' worth
    for images, labels in before + after:
        assert images.shape[1:] == (8, 8, 1) and np.isfinite(images.numpy()).all() and len(labels) <= 16
