"""Key material must never leave the owner: not in configs, manifests or shards.

Each scan has a positive control, so a broken scan cannot pass silently.
"""

import base64
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdisguise import Disguise, export_disguised

from helpers import make_key


def secret_patterns(key):
    """Byte strings whose presence in a file would leak the key."""
    secret = key._secret
    patterns = [secret, base64.b64encode(secret), secret.hex().encode()]
    for material in key.materials:
        if material is None or material.dtype.kind != "f":
            continue
        for m in material:
            patterns += [m.astype("<f4").tobytes(), m.astype("<f8").tobytes()]
    for op in key.plan.ops:
        if getattr(op, "matrices", None) is not None:
            patterns += [m.astype("<f4").tobytes() for m in op.matrices]
    return patterns


def leaks(blob: bytes, key) -> list[int]:
    return [i for i, p in enumerate(secret_patterns(key)) if p in blob]


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector", noise=10)


def test_scan_finds_planted_material(key, tmp_path):
    # Positive controls: the key file holds the secret; raw matrices hold their bytes.
    key.save(str(tmp_path / "key.json"))
    assert leaks(open(tmp_path / "key.json", "rb").read(), key)
    assert leaks(b"xx" + key.materials[0][3].astype("<f4").tobytes() + b"yy", key)


def test_layer_config_holds_no_key_material(key):
    config = json.dumps(Disguise(key).get_config()).encode()
    assert leaks(config, key) == []
    assert b"secret" not in config


def test_keras_config_json_holds_no_key_material(key, tmp_path):
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key), keras.layers.Flatten(), keras.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert leaks(z.read("config.json"), key) == []
        assert leaks(z.read("metadata.json"), key) == []


def test_manifest_and_shards_hold_no_key_material(key, mnist_like, tmp_path):
    out = str(tmp_path / "upload")
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6)))
    export_disguised(ds, key, out, shard_size=4, progress=False)
    names = os.listdir(out)
    assert "manifest.json" in names and len(names) == 3
    for name in names:
        assert leaks(open(os.path.join(out, name), "rb").read(), key) == [], name
