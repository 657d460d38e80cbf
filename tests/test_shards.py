import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdisguise import KeyMismatchError, ShardError, disguise, export_disguised, load_disguised, read_manifest

from helpers import make_key


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
    raw = bytearray(open(shard, "rb").read())
    raw[40] ^= 0xFF
    open(shard, "wb").write(bytes(raw))
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


def test_batched_input_is_refused(key, pairs, tmp_path):
    with pytest.raises(ValueError, match="unbatched"):
        export_disguised(pairs.batch(2), key, str(tmp_path / "upload"), progress=False)
