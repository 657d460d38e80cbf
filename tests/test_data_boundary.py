"""Files as hostile input (issue 22): shards, manifests, sources and query images; --overwrite, --limit, --out.

Each test builds the hostile file for real (a FIFO, a symlink to /dev/zero or out of the data set, a sparse
file, a header that lies) and reads it the way a user would: the library, or the command in a second process.
Whatever could hang runs in a subprocess with a timeout, so that a regression fails instead of hanging.
"""

import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import cli, datasets, export_disguised
from tfdisguise.shards import MAX_MANIFEST_BYTES, ShardError, load_disguised, read_manifest

TIMEOUT = 120  # seconds for a subprocess: a hang fails the test


def _run(args, timeout=TIMEOUT):
    """`python -m tfdisguise.cli ARGS` (or `python -c CODE` when args[0] == "-c"), its exit status and output."""
    command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "tfdisguise.cli", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def key():
    return make_key(image_shape=(8, 8, 1), block_size=4, noise=10)


@pytest.fixture
def key_path(key, tmp_path):
    path = str(tmp_path / "key.json")
    key.save(path)
    return path


@pytest.fixture
def npz(tmp_path):
    path = str(tmp_path / "data.npz")
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), y=np.arange(12) % 2)
    return path


def _upload(key, directory, n=6):
    x = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    export_disguised(tf.data.Dataset.from_tensor_slices((x, np.arange(n) % 2)), key, str(directory), shard_size=4,
                     progress=False)
    return str(directory)


def _hostile_uploads(key, tmp_path) -> dict[str, str]:
    """One data set per hostile file, each otherwise intact."""
    uploads = {}
    for case in ("fifo_shard", "zero_shard", "outside_shard", "fifo_manifest", "zero_manifest", "sparse_manifest"):
        out = _upload(key, tmp_path / case)
        shard, manifest = os.path.join(out, "shard-00001.tfrecord"), os.path.join(out, "manifest.json")
        if case == "fifo_shard":
            os.remove(shard)
            os.mkfifo(shard)
        elif case == "zero_shard":
            os.remove(shard)
            os.symlink("/dev/zero", shard)
        elif case == "outside_shard":
            # The very bytes the manifest vouches for, but from a file outside the data set.
            os.rename(shard, tmp_path / "elsewhere.tfrecord")
            os.symlink(tmp_path / "elsewhere.tfrecord", shard)
        elif case == "fifo_manifest":
            os.remove(manifest)
            os.mkfifo(manifest)
        elif case == "zero_manifest":
            os.remove(manifest)
            os.symlink("/dev/zero", manifest)
        else:  # 1 GB of nothing, sparse: costs no disk
            with open(manifest, "r+b") as f:
                f.truncate(1 << 30)
        uploads[case] = out
    return uploads


_EXPECTED = {
    "fifo_shard": r"shard-00001.tfrecord is a FIFO \(named pipe\), not a regular file",
    "zero_shard": r"shard-00001.tfrecord leads outside",
    "outside_shard": r"shard-00001.tfrecord leads outside .* \(it resolves to .*elsewhere.tfrecord\)",
    "fifo_manifest": r"manifest.json is a FIFO \(named pipe\), not a regular file",
    "zero_manifest": r"manifest.json leads outside",
    "sparse_manifest": rf"manifest.json is 1073741824 bytes, over the {MAX_MANIFEST_BYTES} bytes",
}


def test_load_disguised_refuses_fifos_devices_symlinks_out_and_huge_manifests(key, tmp_path):
    uploads = _hostile_uploads(key, tmp_path)
    # In a second process: before the fix, the FIFOs and /dev/zero hung it, the sparse manifest took 15 s and 3 GB.
    code = ("import json, sys, time\nfrom tfdisguise import load_disguised\nout = {}\n"
            "for case, path in json.loads(sys.argv[1]).items():\n"
            "    for verify in (True, False):\n"
            "        started = time.time()\n"
            "        try:\n"
            "            load_disguised(path, verify=verify)\n"
            "            out[f'{case} {verify}'] = ['read', 0]\n"
            "        except ValueError as e:\n"
            "            out[f'{case} {verify}'] = [f'{type(e).__name__}: {e}', time.time() - started]\n"
            "print('RESULT', json.dumps(out))\n")
    rc, output = _run(["-c", code, json.dumps(uploads)])
    assert rc == 0, output
    results = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    for case, pattern in _EXPECTED.items():
        for verify in (True, False):
            message, seconds = results[f"{case} {verify}"]
            assert message.startswith("ShardError: ") and __import__("re").search(pattern, message), (case, message)
            assert seconds < 5, (case, seconds)
    # The shard outside is still there, unread and untouched; the error said where it leads.
    assert os.path.exists(tmp_path / "elsewhere.tfrecord")


def test_a_symlink_inside_the_data_set_still_reads(key, tmp_path):
    out = _upload(key, tmp_path / "upload")
    shard = os.path.join(out, "shard-00000.tfrecord")
    os.rename(shard, os.path.join(out, "shard-00000.real"))
    os.symlink("shard-00000.real", shard)
    assert sum(1 for _ in load_disguised(out)) == 6


@pytest.mark.parametrize("case", ["fifo_manifest", "zero_shard"])
def test_train_shards_refuses_instead_of_hanging(key, tmp_path, case):
    out = _hostile_uploads(key, tmp_path)[case]
    rc, output = _run(["train", "--shards", out, "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert rc == 1, output
    assert "tfdisguise train: error:" in output and __import__("re").search(_EXPECTED[case], output), output
    assert "Traceback" not in output and not os.path.exists(tmp_path / "run")


def test_write_manifest_refuses_what_a_reader_would_refuse(key, tmp_path):
    from tfdisguise.shards import build_manifest, write_manifest

    shards = [{"file": f"shard-{i:05d}.tfrecord", "count": 1, "sha256": "0" * 64} for i in range(120_000)]
    manifest = build_manifest(key.identity.to_dict(), (8, 8, 1), dtype="float32", shards=shards, label_counts=None)
    with pytest.raises(ShardError, match="over the 16777216 bytes a reader accepts; use larger shards"):
        write_manifest(str(tmp_path), manifest)
    assert os.listdir(tmp_path) == []


# ---- --overwrite deletes only a verified data set of ours ----------------------------------------------------


def _plant(key, tmp_path, names):
    """A directory of the user's files plus a planted manifest that lists them as shards (hashes bogus)."""
    real = read_manifest(_upload(key, tmp_path / "real"))
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "IMG_0001.jpg").write_bytes(b"\xff\xd8 holiday")
    (victim / "album").mkdir()
    (victim / "album" / "beach.jpg").write_bytes(b"\xff\xd8 beach")
    real["shards"] = [{"file": name, "count": count, "sha256": "0" * 64} for name, count in zip(names, (4, 2))]
    (victim / "manifest.json").write_text(json.dumps(real))
    return victim


def test_overwrite_never_deletes_files_a_planted_manifest_names(key, key_path, npz, tmp_path, capsys):
    victim = _plant(key, tmp_path, ["IMG_0001.jpg", "album"])
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", str(victim), "--overwrite",
                     "--quiet"]) == 1
    output = capsys.readouterr().err
    assert "is not a disguised data set" in output and "'IMG_0001.jpg', which is not a shard name" in output
    assert "Nothing was deleted" in output and "--overwrite" in output
    assert (victim / "IMG_0001.jpg").read_bytes() == b"\xff\xd8 holiday"
    assert (victim / "album" / "beach.jpg").read_bytes() == b"\xff\xd8 beach"
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "key.json", "photos", "real"]


def test_overwrite_verifies_every_shard_against_its_checksum(key, key_path, npz, tmp_path):
    # Named as we name shards, but the user's own files: the checksums give them away.
    victim = _plant(key, tmp_path, ["shard-00000.tfrecord", "shard-00001.tfrecord"])
    os.rename(victim / "IMG_0001.jpg", victim / "shard-00000.tfrecord")
    os.rename(victim / "album" / "beach.jpg", tmp_path / "beach.jpg")
    os.rmdir(victim / "album")
    (victim / "shard-00001.tfrecord").write_bytes(b"thesis draft")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", str(victim), "--overwrite",
                     "--quiet"]) == 1
    assert sorted(os.listdir(victim)) == ["manifest.json", "shard-00000.tfrecord", "shard-00001.tfrecord"]
    assert (victim / "shard-00001.tfrecord").read_bytes() == b"thesis draft"

    # A shard that is a symlink (to the user's file) is not ours either.
    upload = _upload(key, tmp_path / "upload")
    shard = os.path.join(upload, "shard-00001.tfrecord")
    os.rename(shard, tmp_path / "kept.tfrecord")
    os.symlink(tmp_path / "kept.tfrecord", shard)
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", upload, "--overwrite", "--quiet"]) == 1
    assert os.path.exists(tmp_path / "kept.tfrecord") and os.path.islink(shard)


def test_overwrite_replaces_a_verified_data_set_and_only_its_files(key, key_path, npz, tmp_path, caplog):
    from tfdisguise import io
    from tfdisguise.shards import check_output_dir

    upload = _upload(key, tmp_path / "upload")
    names = check_output_dir(upload, overwrite=True)
    assert sorted(names) == ["manifest.json", "shard-00000.tfrecord", "shard-00001.tfrecord"]
    # A file that appears between the check and the swap survives it (the old directory is kept, and named).
    with io.atomic_dir(upload, replace=names) as tmp:
        open(os.path.join(tmp, "new"), "w").close()
        (tmp_path / "upload" / "late.txt").write_text("arrived late")
    kept = [n for n in os.listdir(tmp_path) if n.startswith(".upload.old-")]
    assert os.listdir(upload) == ["new"] and len(kept) == 1
    assert os.listdir(tmp_path / kept[0]) == ["late.txt"] and "late.txt" in caplog.text


# ---- sources and query images: headers checked before anything is allocated ----------------------------------


def _npy_bytes(shape, payload=b"\0" * 64, dtype="|u1"):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    import io as bytes_io

    buf = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def _png_header(width, height):
    """A PNG that claims width x height (gray) and holds almost nothing: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_predict_refuses_fifo_bomb_npy_and_400_megapixel_png(key_path, tmp_path, capsys):
    fifo, npy, png = tmp_path / "query.png", tmp_path / "bomb.npy", tmp_path / "big.png"
    os.mkfifo(fifo)
    npy.write_bytes(_npy_bytes((10**9, 8, 8)))
    png.write_bytes(_png_header(20000, 20000))
    expected = {fifo: "query.png is a FIFO (named pipe), not a regular file",
                npy: "its header claims shape (1000000000, 8, 8) of uint8 (64000000000 bytes), but 64 bytes follow",
                png: "big.png: the image is too large to decode (Image size (400000000 pixels) exceeds limit"}
    argv = ["predict", "--key", key_path, "--server", "127.0.0.1:1", "--model", "m"]
    # The FIFO hung predict: a second process. The others failed with a traceback: here, their messages.
    rc, output = _run([*argv, str(fifo)])
    assert rc == 1 and expected.pop(fifo) in output and "Traceback" not in output, output
    # A symlink to /dev/zero as a query image: a device, refused before it is read (it never ends).
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    rc, output = _run([*argv, str(zero)])
    assert rc == 1 and "not a regular file" in output and "Traceback" not in output, output
    for path, needle in expected.items():
        assert cli.main([*argv, str(path)]) == 1
        assert needle in capsys.readouterr().err


def test_sources_refuse_lying_headers_and_huge_images(tmp_path):
    # An .npz whose x claims 10^9 images: refused from its header, in bounded memory.
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_bytes((10**9, 8, 8)))
        z.writestr("y.npy", _npy_bytes((4,), b"\0" * 32, "<i8"))
    code = ("import sys\nfrom tfdisguise import datasets\n"
            "try:\n    datasets.load(sys.argv[1])\nexcept ValueError as e:\n    print('REFUSED', e)\n")
    rc, output = _run(["-c", code, str(bomb)])
    assert rc == 0 and "REFUSED" in output and "claims shape (1000000000, 8, 8)" in output, output
    # A folder whose first image is 400 megapixels: refused from its header, before decoding.
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    (tmp_path / "folder" / "cat" / "a.png").write_bytes(_png_header(20000, 20000))
    with pytest.raises(ValueError, match=r"a.png: the image is too large to decode \(Image size \(400000000 pixels"):
        datasets.load(str(tmp_path / "folder"))
    # Past our limit but short of PIL's own: refused by ours, before decoding.
    (tmp_path / "folder" / "cat" / "a.png").write_bytes(_png_header(10000, 10000))
    with pytest.raises(ValueError, match=r"a.png: the image is 10000x10000 \(100000000 pixels\), over the 89478485"):
        datasets.load(str(tmp_path / "folder"))
    # An IDX file whose header claims more than it holds, and a FIFO as a source's file.
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "t-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 10**6, 28, 28))
    (tmp_path / "idx" / "t-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 10**6))
    with pytest.raises(ValueError, match="truncated IDX file, or corrupt: its header claims"):
        datasets.load(str(tmp_path / "idx"))
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(ValueError, match="pipe.npz is a FIFO"):
        datasets.load(str(tmp_path / "pipe.npz"))


# ---- --limit, train --out, Beam options ----------------------------------------------------------------------


def test_limit_must_be_positive_everywhere(key_path, npz, tmp_path, capsys):
    rc, output = _run(["disguise", "--key", key_path, "--input", npz, "--out", str(tmp_path / "o"), "--limit", "-5"])
    assert rc == 2 and "argument --limit: expected a whole number >= 1, got '-5'" in output, output
    assert not os.path.exists(tmp_path / "o")
    commands = {
        "train": ["train", "--input", npz, "--out", str(tmp_path / "run")],
        "stream": ["stream", "--key", key_path, "--input", npz, "--out", str(tmp_path / "s")],
        "calibrate": ["calibrate", "--input", npz, "--out", str(tmp_path / "c")],
        "preview": ["preview", "--key", key_path, "--input", npz, "--out", str(tmp_path / "p.png")],
    }
    for name, argv in commands.items():
        flags = ["--limit"] + (["--public-limit"] if name == "calibrate" else [])
        for flag in flags if name != "preview" else ["--n"]:
            for value in ("0", "-5"):
                with pytest.raises(SystemExit) as info:
                    cli.main([*argv, flag, value])
                assert info.value.code == 2
                err = capsys.readouterr().err
                assert f"argument {flag}: expected a whole number >= 1, got '{value}'" in err, (name, err)
    with pytest.raises(ValueError, match=r"`limit` must be a number of images >= 1 \(or None for all\). "
                                         r"Received: limit=-5"):
        datasets.load(npz, limit=-5)


def test_train_refuses_an_earlier_run_without_overwrite(npz, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"last week's model")
    (run / "disguise.json").write_text("{}")  # an earlier disguised run's identity
    started = time.time()
    assert cli.main(["train", "--input", npz, "--out", str(run), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "holds an earlier run (model.keras, disguise.json); refusing to overwrite it. Pass --overwrite" in err
    assert time.time() - started < 10, "refused before training"
    assert (run / "model.keras").read_bytes() == b"last week's model"
    (tmp_path / "file").write_text("x")
    assert cli.main(["train", "--input", npz, "--out", str(tmp_path / "file"), "--epochs", "1"]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    # With --overwrite: replaced, and the plain run leaves no stale identity for `tfdisguise export` to misread.
    assert cli.main(["train", "--input", npz, "--out", str(run), "--epochs", "1", "--batch-size", "4",
                     "--overwrite"]) == 0
    assert (run / "model.keras").read_bytes() != b"last week's model"
    assert sorted(os.listdir(run)) == ["history.json", "history.png", "model.keras"]


@pytest.mark.parametrize("options, needle", [
    ("direct_num_workers=-3", "direct_num_workers must be >= 0 (0: one worker per CPU core). Received: -3"),
    ("direct_num_workers=two", "argument --direct_num_workers: invalid int value: 'two'"),
])
def test_beam_options_are_checked_before_any_work(key_path, npz, tmp_path, capsys, options, needle):
    out = tmp_path / "upload"
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", str(out), "--runner", "DirectRunner",
                     "--beam_pipeline_options", options, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: --beam_pipeline_options {options}: {needle}" in err and "Traceback" not in err, err
    assert not out.exists()


def test_json_descriptions_are_read_as_untrusted_files(tmp_path):
    """`stream.json` and `disguise.json` go through the same checks as a manifest (io.read_json).

    Mutations tried: `io.read_json` opening the file with a plain `open` (the FIFO hangs: the subprocess times out).
    """
    (tmp_path / "stream").mkdir()
    os.mkfifo(tmp_path / "stream" / "stream.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "disguise.json").symlink_to("/dev/zero")
    (tmp_path / "big.json").write_bytes(b"[" + b" " * 100 + b"]")
    code = ("import sys\nfrom tfdisguise import io, stream\nfrom tfdisguise.identity import Identity\n"
            "for call in (lambda: stream._read_info(sys.argv[1]), lambda: Identity.load(sys.argv[2]),\n"
            "             lambda: io.read_json(sys.argv[3], max_bytes=50)):\n"
            "    try:\n        call()\n    except ValueError as e:\n        print('REFUSED', type(e).__name__, e)\n")
    rc, output = _run(["-c", code, str(tmp_path / "stream"), str(tmp_path / "run"), str(tmp_path / "big.json")])
    assert rc == 0, output
    assert "REFUSED StreamError Stream description" in output and "FIFO" in output, output
    assert "REFUSED IdentityError Identity file" in output and "not a regular file" in output, output
    assert "REFUSED ValueError JSON file" in output and "over the 50 bytes" in output, output
    # A missing file is still told apart from a bad one.
    with pytest.raises(FileNotFoundError):
        from tfdisguise import io
        io.read_json(str(tmp_path / "absent.json"))
