import base64
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tfdisguise import Key, KeyFileError, Spec, disguise


@pytest.fixture
def key():
    return Key.generate(Spec.create((8, 8, 1), block_size=4, rmt="projection", rmt_mode="vector", noise=0))


@pytest.fixture
def key_path(key, tmp_path):
    path = str(tmp_path / "key.json")
    key.save(path)
    return path


def test_save_is_private_and_loads_back(key, key_path, tmp_path):
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    loaded = Key.load(key_path)
    assert loaded == key and loaded.fingerprint == key.fingerprint and loaded.spec == key.spec
    assert len(key.fingerprint) == 16 and int(key.fingerprint, 16) >= 0
    assert os.listdir(tmp_path) == ["key.json"]  # no temp file left behind


def test_save_refuses_to_overwrite(key, key_path):
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        key.save(key_path)
    key.save(key_path, overwrite=True)


def test_secrets_are_random_and_material_differs():
    a, b = (Key.generate(image_shape=(8, 8, 1), block_size=4) for _ in range(2))
    assert a.fingerprint != b.fingerprint
    assert not np.allclose(a.materials[0], b.materials[0])


def test_same_key_file_gives_identical_output_in_a_new_process(key, key_path, tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, tfdisguise as t;"
        "k = t.Key.load(sys.argv[1]);"
        "np.save(sys.argv[3], t.disguise(np.load(sys.argv[2]), k));"
        "np.save(sys.argv[4], k.materials[0])"
    )
    subprocess.run([sys.executable, "-c", script, key_path, str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy"), str(tmp_path / "m.npy")], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "m.npy"), key.materials[0])  # bit-identical
    assert np.array_equal(np.load(tmp_path / "y.npy"), disguise(x, key))
    other = Key.generate(key.spec)
    assert not np.allclose(disguise(x, other), disguise(x, key))


def _rewrite(path, mutate):
    with open(path) as f:
        body = json.load(f)
    mutate(body)
    with open(path, "w") as f:
        json.dump(body, f)


def test_corrupt_file_is_refused(key_path):
    with open(key_path, "w") as f:
        f.write("{not json")
    with pytest.raises(KeyFileError, match="corrupt or truncated"):
        Key.load(key_path)


def test_truncated_file_is_refused(key_path):
    raw = open(key_path, "rb").read()
    with open(key_path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(KeyFileError, match="corrupt or truncated"):
        Key.load(key_path)


def test_tampered_spec_is_refused(key_path):
    _rewrite(key_path, lambda b: b["spec"].update(block_size=[8, 8]))
    with pytest.raises(KeyFileError, match="tampered"):
        Key.load(key_path)


def test_tampered_secret_is_refused(key_path):
    def flip(b):
        raw = bytearray(base64.b64decode(b["secret"]))
        raw[0] ^= 1
        b["secret"] = base64.b64encode(bytes(raw)).decode()

    _rewrite(key_path, flip)
    with pytest.raises(KeyFileError, match="fingerprint does not match"):
        Key.load(key_path)


def test_short_secret_and_wrong_version_are_refused(key_path, tmp_path):
    _rewrite(key_path, lambda b: b.update(secret=base64.b64encode(b"short").decode()))
    with pytest.raises(KeyFileError, match="must be 32 bytes"):
        Key.load(key_path)
    _rewrite(key_path, lambda b: b.update(version=99))
    with pytest.raises(KeyFileError, match="version 99"):
        Key.load(key_path)
    _rewrite(key_path, lambda b: b.update(format="something"))
    with pytest.raises(KeyFileError, match="not a tfdisguise key file"):
        Key.load(key_path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_file_is_refused(key_path, mode):
    os.chmod(key_path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Key.load(key_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        Key.load(str(tmp_path / "nope.json"))


def test_key_never_prints_or_pickles_its_secret(key):
    secret_b64 = base64.b64encode(key._secret).decode()
    assert secret_b64 not in repr(key) and key.fingerprint in repr(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
