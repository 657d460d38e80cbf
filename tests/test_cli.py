import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfdisguise import Key, cli, load_disguised


@pytest.fixture
def npz(rng, tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez(path, x=rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8), y=np.arange(12) % 3)
    return path


@pytest.fixture
def key_path(tmp_path):
    path = str(tmp_path / "key.json")
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--block-size", "4", "--rmt", "projection",
                     "--rmt-mode", "vector", "--no-permute", "--noise", "5", "--out", path]) == 0
    return path


def test_keygen_writes_private_key_with_spec(tmp_path, capsys):
    key_path = str(tmp_path / "k.json")
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--block-size", "4", "--rmt", "projection",
                     "--rmt-mode", "vector", "--no-permute", "--noise", "5", "--out", key_path]) == 0
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    key = Key.load(key_path)
    assert [s.name for s in key.spec.steps] == ["rmt", "noise"]
    assert key.spec.block_size == (4, 4) and key.spec.noise_level == 5
    assert key.fingerprint in capsys.readouterr().out


def test_keygen_errors(key_path, capsys):
    assert cli.main(["keygen", "--image-shape", "32,32,3", "--block-size", "7", "--out", key_path + "2"]) == 1
    assert "`block_size` (7, 7) must divide the image shape (32, 32, 3)" in capsys.readouterr().err
    assert not os.path.exists(key_path + "2")
    before = open(key_path).read()
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--out", key_path]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert open(key_path).read() == before  # the existing key is not lost
    with pytest.raises(SystemExit):
        cli.main(["keygen", "--image-shape", "8,x,3", "--out", key_path])


def test_disguise_writes_shards(key_path, npz, tmp_path, capsys):
    out = str(tmp_path / "upload")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out, "--shard-size", "5", "--quiet"]) == 0
    assert "wrote 12 disguised images in 3 shard(s)" in capsys.readouterr().out
    assert sum(1 for _ in load_disguised(out, key=Key.load(key_path))) == 12


def test_disguise_errors(key_path, npz, tmp_path, capsys):
    out = str(tmp_path / "upload")
    os.chmod(key_path, 0o644)
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out]) == 1
    assert "chmod 600" in capsys.readouterr().err
    os.chmod(key_path, 0o600)
    np.savez(tmp_path / "mnist.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    assert cli.main(["disguise", "--key", key_path, "--input", str(tmp_path / "mnist.npz"), "--out", out]) == 1
    assert "but the key's spec expects (8, 8, 3)" in capsys.readouterr().err
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_preview_writes_png(key_path, npz, tmp_path):
    out = str(tmp_path / "grid.png")
    assert cli.main(["preview", "--key", key_path, "--input", npz, "--out", out, "--n", "4"]) == 0
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_console_script_entry_point(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    out = str(tmp_path / "k.json")
    ok = subprocess.run([exe, "keygen", "--image-shape", "28,28,1", "--block-size", "7", "--noise", "100", "--out", out],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.load(open(out))["spec"]["block_size"] == [7, 7]
    bad = subprocess.run([exe, "disguise", "--key", str(tmp_path / "none.json"), "--input", "x.npz", "--out", "o"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
