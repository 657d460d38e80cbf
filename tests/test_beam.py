"""Bulk disguising on Apache Beam (tfdisguise.beam, `tfdisguise disguise --runner`)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import make_key
from test_leaks import leaks, scan_dir

from tfdisguise import beam as tfd_beam
from tfdisguise import load_disguised
from tfdisguise.cli import main as cli_main
from tfdisguise.shards import ShardError, read_manifest


@pytest.fixture
def owner(tmp_path):
    """A 14x14 source of 50 images (labels 0..49 in order, so a shard's labels say which images it holds)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (50, 14, 14, 1), dtype=np.uint8), y=np.arange(50))
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector", noise=10)
    key.save(str(tmp_path / "key.json"))
    return tmp_path, key


def _labels(out):
    return [int(y) for _, y in load_disguised(str(out)).as_numpy_iterator()]


def test_two_worker_processes_write_the_shards_and_manifest_of_export_disguised(owner):
    tmp, key = owner
    out = tmp / "upload"
    code = cli_main(["disguise", "--key", str(tmp / "key.json"), "--input", str(tmp / "data.npz"),
                     "--out", str(out), "--shard-size", "20", "--runner", "DirectRunner",
                     "--beam_pipeline_options", "direct_num_workers=2,direct_running_mode=multi_processing"])
    assert code == 0
    manifest = read_manifest(str(out))
    assert manifest["fingerprint"] == key.fingerprint and manifest["count"] == 50
    # Deterministic sharding: shard i holds images [20 i, 20 i + 20) of the loader's seeded order (the order the
    # one-process `disguise` writes), whichever worker wrote it.
    from tfdisguise.datasets import load

    assert [(s["file"], s["count"]) for s in manifest["shards"]] == [
        ("shard-00000.tfrecord", 20), ("shard-00001.tfrecord", 20), ("shard-00002.tfrecord", 10)]
    assert _labels(out) == load(str(tmp / "data.npz")).y.tolist()
    assert manifest["labels"]["present"] and manifest["labels"]["counts"] == {str(i): 1 for i in range(50)}
    # The same format as the one-process export, field for field.
    from tfdisguise import export_disguised

    single = export_disguised(load(str(tmp / "data.npz")).to_dataset(), key, str(tmp / "single"), shard_size=20,
                              progress=False)
    def public(m):  # everything but what differs between any two runs (time, and the noise in the shards)
        return {**{k: v for k, v in m.items() if k not in ("created", "seconds", "shards")},
                "shards": [(s["file"], s["count"]) for s in m["shards"]]}

    assert public(single) == public(manifest)
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp / "single"))
    images = np.stack([x for x, _ in load_disguised(str(out)).as_numpy_iterator()])
    assert images.shape == (50, 14, 14, 1) and np.isfinite(images).all()
    assert scan_dir(str(out), key) == {}  # no key material in shards or manifest


def test_shards_equal_the_one_process_export_bit_for_bit_without_noise(owner):
    tmp, _ = owner
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="matrix", noise=0)
    key.save(str(tmp / "exact.json"))
    tfd_beam.disguise_on_beam(str(tmp / "data.npz"), str(tmp / "exact.json"), str(tmp / "beam"), shard_size=16)
    from tfdisguise import disguise, export_disguised
    from tfdisguise.datasets import load

    export_disguised(load(str(tmp / "data.npz")).to_dataset(), key, str(tmp / "single"), shard_size=16,
                     progress=False)
    beam_images = [x for x, _ in load_disguised(str(tmp / "beam")).as_numpy_iterator()]
    single_images = [x for x, _ in load_disguised(str(tmp / "single")).as_numpy_iterator()]
    assert len(beam_images) == len(single_images) == 50
    assert all(np.array_equal(a, b) for a, b in zip(beam_images, single_images))  # bit for bit, image for image
    np.testing.assert_allclose(np.stack(beam_images), disguise(load(str(tmp / "data.npz")).x, key), atol=1e-3)


def test_the_pipeline_holds_the_key_path_never_the_key(owner):
    tmp, key = owner
    import apache_beam as beam
    import cloudpickle

    source = tfd_beam._source_args(str(tmp / "data.npz"), "all", 0.2, 0, None)
    expected = {"fingerprint": key.fingerprint, "count": 50, "image_shape": [14, 14, 1]}
    fn = tfd_beam._shard_fn(beam)(str(tmp / "key.json"), source, str(tmp), 10, "float32", expected)
    blob = cloudpickle.dumps(fn)
    assert not leaks(blob, key) and str(tmp / "key.json").encode() in blob
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        cloudpickle.dumps(key)
    fn.setup()  # on the worker: the key comes from the file
    assert fn.key.fingerprint == key.fingerprint
    # A worker whose key file differs from the driver's refuses to write anything.
    other = tfd_beam._shard_fn(beam)(str(tmp / "key.json"), source, str(tmp), 10, "float32",
                                     {**expected, "fingerprint": "0" * 16})
    with pytest.raises(ValueError, match="differs from the driver's"):
        other.setup()


def test_a_failing_pipeline_leaves_no_directory(owner, monkeypatch):
    tmp, _ = owner
    real = tfd_beam.write_shard

    def fail_on_shard_2(path, *args, **kwargs):
        if path.endswith("shard-00002.tfrecord"):
            raise OSError("disk full (planted)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tfd_beam, "write_shard", fail_on_shard_2)
    with pytest.raises(Exception, match="disk full"):
        tfd_beam.disguise_on_beam(str(tmp / "data.npz"), str(tmp / "key.json"), str(tmp / "out"), shard_size=10)
    assert sorted(p for p in os.listdir(tmp) if "out" in p) == []  # neither the output nor its temporary sibling


def test_a_killed_pipeline_leaves_nothing_that_looks_complete(owner):
    tmp, _ = owner
    rng = np.random.default_rng(1)
    np.savez(tmp / "big.npz", x=rng.integers(0, 256, (3000, 14, 14, 1), dtype=np.uint8), y=np.arange(3000) % 10)
    script = ("import sys; from tfdisguise.cli import main; "
              "sys.exit(main(['disguise', '--key', sys.argv[1], '--input', sys.argv[2], '--out', sys.argv[3], "
              "'--shard-size', '5', '--runner', 'DirectRunner']))")
    out = tmp / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp / "key.json"), str(tmp / "big.npz"), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        staging = [p for p in tmp.iterdir() if p.name.startswith(".killed.tmp-")]
        if staging and any(f.suffix == ".tfrecord" for f in staging[0].iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the pipeline finished before it could be killed; give it more shards"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert staging and not (staging[0] / "manifest.json").exists()  # the hidden leftover is visibly incomplete
    with pytest.raises((ShardError, FileNotFoundError, OSError)):
        read_manifest(str(out))


def test_bad_beam_arguments_are_named(owner, capsys):
    tmp, _ = owner
    with pytest.raises(ValueError, match="NAME=VALUE"):
        tfd_beam.pipeline_flags("direct_num_workers")
    base = ["disguise", "--key", str(tmp / "key.json"), "--input", str(tmp / "data.npz"), "--out", str(tmp / "o")]
    assert cli_main([*base, "--beam_pipeline_options", "direct_num_workers=2"]) != 0
    assert "pass --runner too" in capsys.readouterr().err
    assert cli_main([*base, "--runner", "DirectRunner", "--copies", "2"]) != 0
    assert "--copies and --augment are not available with --runner" in capsys.readouterr().err
    wrong = make_key(image_shape=(28, 28, 1), block_size=7, noise=0)
    wrong.save(str(tmp / "wrong.json"))
    with pytest.raises(ValueError, match=r"shape \(14, 14, 1\), but the key's spec expects \(28, 28, 1\)"):
        tfd_beam.disguise_on_beam(str(tmp / "data.npz"), str(tmp / "wrong.json"), str(tmp / "o"))
    assert not (tmp / "o").exists()


def test_the_manifest_is_the_last_file_written(owner, monkeypatch):
    """Every shard exists and is final before the manifest names it (the pipeline's last step)."""
    tmp, _ = owner
    seen = []
    real = tfd_beam.write_manifest

    def record(directory, manifest):
        seen.append(sorted(os.listdir(directory)))
        real(directory, manifest)

    monkeypatch.setattr(tfd_beam, "write_manifest", record)
    manifest = tfd_beam.disguise_on_beam(str(tmp / "data.npz"), str(tmp / "key.json"), str(tmp / "o"),
                                         shard_size=20)
    assert seen == [[s["file"] for s in manifest["shards"]]]
    assert json.loads((tmp / "o" / "manifest.json").read_text())["count"] == 50
