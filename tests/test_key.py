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
    with open(key_path, "rb") as f:
        raw = f.read()
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


# ---- hostile or careless key files (issue 9): each refused at once, as a KeyFileError ------------------


def test_fifo_is_refused_without_blocking(tmp_path):
    import threading

    fifo = str(tmp_path / "key.json")
    os.mkfifo(fifo, 0o600)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_load_error(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # a blocked open(): let it go before failing
        with open(fifo, "w"):
            pass
        reader.join(timeout=5)
        pytest.fail("Key.load blocked on a FIFO")
    assert "is a FIFO (named pipe), not a regular file" in outcome[0]


def _load_error(path) -> str:
    try:
        Key.load(path)
    except KeyFileError as e:
        return str(e)
    return "loaded"


def test_directory_and_device_are_refused_as_not_regular_files(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="is a directory, not a regular file") as err:
        Key.load(str(folder))
    assert "chmod" not in str(err.value)
    with pytest.raises(KeyFileError, match="is a character device, not a regular file"):
        Key.load("/dev/zero")


def test_huge_file_is_refused_before_reading(tmp_path):
    import time

    path = str(tmp_path / "key.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.truncate(400 << 20)  # sparse: 400 MB that take no disk
    started = time.monotonic()
    with pytest.raises(KeyFileError, match=r"is 419430400 bytes; a key file is at most 65536 bytes"):
        Key.load(path)
    assert time.monotonic() - started < 0.5


def test_deep_or_mistyped_json_is_a_key_file_error(key_path, key):
    deep = "[" * 20_000 + "]" * 20_000  # small, but deeper than Python's parser recurses
    with open(key_path, "w") as f:
        f.write(deep)
    with pytest.raises(KeyFileError, match="nested too deeply"):
        Key.load(key_path)
    good = json.loads(key.to_json())
    for field, value, needle in (("spec", [1, 2], "`spec` must be a JSON object"),
                                 ("spec", {}, "invalid spec"),
                                 ("spec", {"image_shape": "x"}, "invalid spec"),
                                 ("secret", 7, "`secret` must be a string"),
                                 ("fingerprint", ["a"], "`fingerprint` must be a string"),
                                 ("mac", None, "`mac` must be a string")):
        with open(key_path, "w") as f:
            json.dump(dict(good, **{field: value}), f)
        with pytest.raises(KeyFileError, match=needle):
            Key.load(key_path)
    with open(key_path, "wb") as f:
        f.write(b"\xff\xfe not text")
    with pytest.raises(KeyFileError, match="corrupt or truncated"):
        Key.load(key_path)
