import json
import os

import keras
import numpy as np
import pytest
from test_privacy import synthetic_classes

from tfdisguise import cli


@pytest.fixture
def npz(rng, tmp_path):
    x, y = synthetic_classes(rng, n=160)
    path = str(tmp_path / "data.npz")
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def key_path(tmp_path):
    path = str(tmp_path / "key.json")
    assert cli.main(["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--rmt", "orthogonal", "--noise", "20",
                     "--out", path]) == 0
    return path


def check_outputs(out):
    assert {"model.keras", "history.json", "history.png"} <= set(os.listdir(out))
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    assert len(history["history"]["loss"]) == 1 and 0 <= history["val_accuracy"] <= 1
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    assert model.output_shape == (None, 2)
    return history


def test_train_plain_and_on_the_fly(npz, key_path, tmp_path):
    plain = ["train", "--input", npz, "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "plain")]
    assert cli.main(plain) == 0
    assert check_outputs(str(tmp_path / "plain"))["disguised"] is False
    out = str(tmp_path / "wrapped")
    wrapped = ["train", "--input", npz, "--key", key_path, "--epochs", "1", "--batch-size", "32", "--out", out]
    assert cli.main(wrapped) == 0
    history = check_outputs(out)
    assert history["disguised"] is True and len(history["fingerprint"]) == 16


def test_train_on_shards(npz, key_path, tmp_path):
    shards = str(tmp_path / "upload")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", shards, "--quiet"]) == 0
    out = str(tmp_path / "cloud")
    assert cli.main(["train", "--shards", shards, "--epochs", "1", "--batch-size", "32", "--out", out]) == 0
    history = check_outputs(out)
    assert history["train_images"] == 128 and history["val_images"] == 32


def test_train_errors(npz, key_path, tmp_path, capsys):
    shards = str(tmp_path / "upload")
    cli.main(["disguise", "--key", key_path, "--input", npz, "--out", shards, "--quiet"])
    assert cli.main(["train", "--shards", shards, "--key", key_path, "--out", str(tmp_path / "x")]) == 1
    assert "already disguised" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--shards", shards, "--input", npz, "--out", str(tmp_path / "x")])
    assert cli.main(["train", "--input", npz, "--model", "vgg", "--out", str(tmp_path / "y")]) == 1
    assert "`name` (--model) must be one of" in capsys.readouterr().err
