import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import KeyMismatchError, ShardError, disguise, export_disguised, load_disguised, read_manifest


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal")


@pytest.fixture
def pairs(mnist_like):
    return tf.data.Dataset.from_tensor_slices((mnist_like, np.array([0, 1, 2, 1, 0, 1])))


def test_round_trip_with_manifest(key, pairs, mnist_like, tmp_path):
    out = str(tmp_path / "upload")
    manifest = export_disguised(pairs, key, out, shard_size=4, class_names=["a", "b", "c"], progress=False)
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.tfrecord", "shard-00001.tfrecord"]
    on_disk = read_manifest(out)
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["count"] == 6 and [s["count"] for s in on_disk["shards"]] == [4, 2]
    assert on_disk["labels"] == {"present": True, "num_classes": 3, "counts": {"0": 2, "1": 3, "2": 1},
                                 "class_names": ["a", "b", "c"]}
    ds = load_disguised(out, key=key)
    assert ds.cardinality().numpy() == 6
    images, labels = next(iter(ds.batch(6)))
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 2, 1, 0, 1])
    np.testing.assert_allclose(images.numpy(), disguise(mnist_like, key), atol=1e-4)
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_images_without_labels(key, mnist_like, tmp_path):
    out = str(tmp_path / "upload")
    manifest = export_disguised(tf.data.Dataset.from_tensor_slices(mnist_like), key, out, progress=False)
    assert manifest["labels"]["present"] is False
    assert [int(y) for _, y in load_disguised(out)] == [-1] * 6


def test_interrupted_export_leaves_nothing_that_looks_complete(key, mnist_like, tmp_path):
    def gen():
        for i, x in enumerate(mnist_like):
            if i == 4:
                raise RuntimeError("disk on fire")
            yield x, i

    ds = tf.data.Dataset.from_generator(gen, output_signature=(tf.TensorSpec((14, 14, 1), tf.uint8),
                                                              tf.TensorSpec((), tf.int64)))
    out = str(tmp_path / "upload")
    with pytest.raises(Exception, match="disk on fire"):
        export_disguised(ds, key, out, shard_size=2, batch_size=2, progress=False)
    assert os.listdir(tmp_path) == []


def test_existing_directory_is_not_overwritten_by_default(key, pairs, tmp_path):
    out = str(tmp_path / "upload")
    export_disguised(pairs, key, out, progress=False)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        export_disguised(pairs, key, out, progress=False)
    export_disguised(pairs.take(2), key, out, overwrite=True, progress=False)
    assert read_manifest(out)["count"] == 2
    assert sorted(os.listdir(tmp_path)) == ["upload"]


def test_corrupt_or_missing_shard_is_refused(key, pairs, tmp_path):
    out = str(tmp_path / "upload")
    export_disguised(pairs, key, out, shard_size=4, progress=False)
    shard = os.path.join(out, "shard-00001.tfrecord")
    with open(shard, "rb") as f:
        raw = bytearray(f.read())
    raw[40] ^= 0xFF
    with open(shard, "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(ShardError, match="shard-00001.tfrecord is corrupt"):
        load_disguised(out)
    os.remove(shard)
    with pytest.raises(ShardError, match="missing"):
        load_disguised(out)


def test_directory_without_manifest_is_refused(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json"):
        load_disguised(str(tmp_path))


def test_wrong_key_is_refused(key, pairs, tmp_path):
    out = str(tmp_path / "upload")
    export_disguised(pairs, key, out, progress=False)
    with pytest.raises(KeyMismatchError, match=f"belongs to key {key.fingerprint}"):
        load_disguised(out, key=make_key(seed=9, image_shape=(14, 14, 1), block_size=7))


def test_batched_input_gives_the_same_shards(key, pairs, mnist_like, tmp_path, capsys):
    # The key is noise-free, so the batched and the unbatched export must agree image for image.
    export_disguised(pairs, key, str(tmp_path / "flat"), progress=False)
    manifest = export_disguised(pairs.batch(4), key, str(tmp_path / "batched"), shard_size=4)
    assert manifest["count"] == 6 and [s["count"] for s in manifest["shards"]] == [4, 2]
    flat = next(iter(load_disguised(str(tmp_path / "flat"), key=key).batch(6)))
    batched = next(iter(load_disguised(str(tmp_path / "batched"), key=key).batch(6)))
    np.testing.assert_array_equal(batched[0].numpy(), flat[0].numpy())
    np.testing.assert_array_equal(batched[1].numpy(), [0, 1, 2, 1, 0, 1])
    assert capsys.readouterr().out.endswith("\n"), "the progress bar ends its line"
    with pytest.raises(ValueError, match=r"must hold images \(H, W, C\), batched or not"):
        export_disguised(pairs.batch(2).batch(2), key, str(tmp_path / "twice"), progress=False)


# ---- manifests are not trusted (issue 9) -----------------------------------------------------------


def _edit_manifest(out, mutate):
    path = os.path.join(out, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    mutate(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


@pytest.fixture
def upload(key, pairs, tmp_path):
    out = str(tmp_path / "upload")
    export_disguised(pairs, key, out, shard_size=4, progress=False)
    return out


@pytest.mark.parametrize("name", ["../outside.tfrecord", "/etc/hostname", "sub/shard.tfrecord", "..", ".hidden",
                                  "manifest.json"])
def test_shard_paths_stay_inside_the_data_set(upload, tmp_path, name):
    # A file outside with the shard's very bytes: only the path can give it away.
    with open(os.path.join(upload, "shard-00000.tfrecord"), "rb") as f:
        (tmp_path / "outside.tfrecord").write_bytes(f.read())
    _edit_manifest(upload, lambda m: m["shards"][0].update(file=name))
    with pytest.raises(ShardError, match="must name a file inside the data set's directory"):
        load_disguised(upload)


def test_image_shape_must_be_the_specs_and_the_keys(upload, key):
    _edit_manifest(upload, lambda m: m.update(image_shape=[7, 7, 4]))
    with pytest.raises(ShardError, match=r"image_shape \[7, 7, 4\] is not the spec's image shape \[14, 14, 1\]"):
        load_disguised(upload)
    _edit_manifest(upload, lambda m: m.update(image_shape=[14, 14, 1]))
    other = make_key(image_shape=(28, 28, 1), block_size=7, rmt="orthogonal")
    with pytest.raises(KeyMismatchError):
        load_disguised(upload, key=other)


@pytest.mark.parametrize("field", ["shards", "spec", "fingerprint", "count", "image_shape", "labels"])
def test_missing_fields_are_shard_errors(upload, field):
    _edit_manifest(upload, lambda m: m.pop(field))
    with pytest.raises(ShardError, match=field if field not in ("spec", "fingerprint") else "spec or fingerprint"):
        read_manifest(upload)


@pytest.mark.parametrize("mutate, needle", [
    (lambda m: m["shards"][0].pop("count"), r"missing the field shards\[0\].'count'"),
    (lambda m: m["shards"][0].update(count="4"), r"shards\[0\].'count' must be int"),
    (lambda m: m["shards"].append("x"), r"shards\[2\] must be an object"),
    (lambda m: m.update(count=7), "count is 7, but the shards' counts add up to 6"),
    (lambda m: m["shards"][1].update(sha256="zz"), "64 hex digits"),
])
def test_malformed_fields_are_shard_errors(upload, mutate, needle):
    _edit_manifest(upload, mutate)
    with pytest.raises(ShardError, match=needle):
        read_manifest(upload)


def test_false_per_shard_counts_are_caught(upload):
    # The manifest agrees with itself (5 + 2 = 7); only the shards' own counts lie.
    _edit_manifest(upload, lambda m: [m.update(count=7)] + [s.update(count=c) for s, c in zip(m["shards"], (5, 2))])
    with pytest.raises(ShardError, match="shard-00000.tfrecord holds 4 records, but the manifest says 5"):
        load_disguised(upload)
    seen = []
    with pytest.raises(tf.errors.OpError, match="expected to contain 5 elements"):  # while reading, at that shard
        for image, _ in load_disguised(upload, verify=False):
            seen.append(image)
    assert len(seen) == 4
    # A count too small for the shard's size is refused before the shard is read, with or without `verify`.
    _edit_manifest(upload, lambda m: [m.update(count=6)] + [s.update(count=c) for s, c in zip(m["shards"], (3, 3))])
    for verify in (True, False):
        with pytest.raises(ShardError, match=r"shard-00000.tfrecord is \d+ bytes, over the \d+ bytes"):
            load_disguised(upload, verify=verify)
