"""`train --strategy mirrored` on two logical CPU devices trains as well as one device (issue 8).

Logical devices are fixed when TensorFlow starts, so each run is its own process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import two_classes

from tfdisguise import cli
from tfdisguise.train import TrainConfig


def _train(tmp_path, name, *flags):
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "tfdisguise.cli", "train", "--input", str(tmp_path / "data.npz"),
                           "--key", str(tmp_path / "key.json"), "--epochs", "3", "--batch-size", "32",
                           "--out", str(out), *flags], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "history.json").read_text())


def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path):
    np.savez(tmp_path / "data.npz", **dict(zip("xy", two_classes())))
    assert cli.main(["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--rmt", "orthogonal", "--noise", "10",
                     "--out", str(tmp_path / "key.json")]) == 0
    out, mirrored = _train(tmp_path, "mirrored", "--strategy", "mirrored", "--cpu-devices", "2")
    assert "training with MirroredStrategy on 2 replica(s)" in out
    _, single = _train(tmp_path, "single")
    assert mirrored["config"]["strategy"] == "mirrored" and single["config"]["strategy"] == "none"
    # The same accuracy band on an easy task: both learn it.
    assert mirrored["val_accuracy"] >= 0.95 and single["val_accuracy"] >= 0.95


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match=r"`strategy` must be one of \('none', 'mirrored'\)"):
        TrainConfig(strategy="multi_worker")


def test_mirrored_on_shards_is_refused_with_the_way_that_works(tmp_path, capsys):
    from helpers import make_key

    from tfdisguise import export_disguised

    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=10)
    x = np.zeros((8, 8, 8, 1), np.uint8)
    import tensorflow as tf

    export_disguised(tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 2)), key, str(tmp_path / "s"),
                     progress=False)
    assert cli.main(["train", "--shards", str(tmp_path / "s"), "--strategy", "mirrored", "--out",
                     str(tmp_path / "run")]) != 0
    assert "`--strategy` 'mirrored' does not work with `--shards` yet" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
