"""Disguised data sets for outsourcing: TFRecord shards plus a key-free manifest.

`export_disguised` writes into a temporary sibling directory and renames it into
place only after the manifest is written, so an interrupted run never leaves a
directory that looks complete. With `overwrite=True` it replaces only a
disguised data set that it can verify as one it wrote: our manifest, every shard
it lists present as a regular file named as we name shards and matching its
sha256, and nothing else. Anything else is refused and left untouched, and the
replacement deletes only those verified files.

The manifest is checked before it is trusted: a regular file of at most
`MAX_MANIFEST_BYTES`, every field present and typed, shard files named inside
the data set's directory (no "..", no absolute paths), `image_shape` the
spec's. `load_disguised` reads only regular files (a FIFO or a device would hang
it) that stay inside the directory (no symlink to a file elsewhere) and are no
larger than their records can be; it verifies every shard's sha256 and record
count, and checks each shard's count again while reading.

Example:

>>> import os, tempfile
>>> import numpy as np, tensorflow as tf
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> key = Key.generate(Spec.create((8, 8, 1), block_size=4, noise=10))
>>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((5, 8, 8, 1), "uint8"), np.arange(5) % 2))
>>> out = os.path.join(tempfile.mkdtemp(), "upload")
>>> manifest = export_disguised(ds, key, out, progress=False)
>>> manifest["count"], manifest["fingerprint"] == key.fingerprint
(5, True)
>>> images, labels = next(iter(load_disguised(out).batch(5)))
>>> images.shape.as_list(), labels.numpy().tolist()
([5, 8, 8, 1], [0, 1, 0, 1, 0])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfdisguise import io
from tfdisguise.data import image_spec_of, wrap
from tfdisguise.identity import Identity
from tfdisguise.key import Key

__all__ = ["export_disguised", "load_disguised", "read_manifest", "check_output_dir", "ShardError", "MANIFEST",
           "MAX_MANIFEST_BYTES"]

MANIFEST = "manifest.json"
# A manifest entry per shard is about 170 bytes (indent 2): 16 MiB holds some 90,000 shards (900 million images at
# the default 10,000 per shard), plus labels and class names. Anything larger is not a manifest we wrote.
MAX_MANIFEST_BYTES = 16 << 20
# What `export_disguised` and the Beam pipeline name their shards; `--overwrite` deletes nothing named otherwise.
_OUR_SHARD = re.compile(r"shard-[0-9]{5,}\.tfrecord")
# A record's framing (16 bytes) and its Example's field names and tags take well under this beyond the image.
_RECORD_OVERHEAD = 128
FORMAT = "tfdisguise.shards"
VERSION = 1
# How shards may store disguised values, and their little-endian numpy types.
DTYPES = ("float32", "float16")
_LITTLE = {"float32": "<f4", "float16": "<f2"}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class ShardError(ValueError):
    """A disguised data set is incomplete, corrupt, or not what was expected."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _as_pairs(ds: tf.data.Dataset) -> tuple[tf.data.Dataset, bool]:
    """(image, label) pairs from any element structure `wrap` accepts; label -1 if none."""
    spec = ds.element_spec
    _, get_image, _ = image_spec_of(spec)
    if isinstance(spec, tuple) and len(spec) > 1:
        return ds.map(lambda *e: (e[0], tf.cast(e[1], tf.int64))), True
    if isinstance(spec, dict) and "label" in spec:
        return ds.map(lambda e: (e["image"], tf.cast(e["label"], tf.int64))), True
    is_tuple = isinstance(spec, tuple)  # tf.data unpacks tuples into arguments
    return ds.map(lambda *e: (get_image(e if is_tuple else e[0]), tf.constant(-1, tf.int64))), False


def _example(image: np.ndarray, label: int, dtype: str = "float32") -> bytes:
    if dtype == "float16" and np.abs(image).max() > _FLOAT16_MAX:
        raise ValueError(f"A disguised image holds {np.abs(image).max():g}, beyond float16's range "
                         f"({_FLOAT16_MAX:g}); export it with dtype='float32'.")
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.astype(_LITTLE[dtype]).tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def export_disguised(
    ds: tf.data.Dataset,
    key: Key,
    out_dir: str,
    *,
    shard_size: int = 10000,
    batch_size: int = 256,
    class_names: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    total: int | None = None,
    copies: int = 1,
    augment=None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Disguises `ds` with `key` and writes TFRecord shards plus `manifest.json`.

    `ds` holds images, `(image, label)` pairs or dicts with "image" (and
    optionally "label"), batched or not (as for `wrap`); the shards hold one
    image per record either way. The manifest records the public spec, the key
    fingerprint, counts, each shard's sha256 and label counts; it never holds
    key material. Paths go through `tf.io.gfile`, so `gs://` works.

    `copies=K` writes the data set K times over (pass after pass), each pass
    with fresh noise and, with `augment` (see `wrap`), a fresh owner-side
    augmentation of the plain images: K x the images for the cloud to train on.
    The copies of one image are related, so take validation data from a
    separate export (`copies=1`, no `augment`), not from a split of this one.

    `dtype="float16"` stores the disguised values at half the size;
    `load_disguised` returns float32 either way.

    Returns the manifest.
    """
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    if shard_size < 1:
        raise ValueError(f"`shard_size` must be >= 1. Received: shard_size={shard_size}")
    out_dir = out_dir.rstrip("/")
    replace = check_output_dir(out_dir, overwrite=overwrite)
    image_spec, _, _ = image_spec_of(ds.element_spec)
    if image_spec.shape.rank == 4:  # batched, as `wrap` takes it: the batches are only containers here
        ds = ds.unbatch()
    elif image_spec.shape.rank != 3:
        raise ValueError(
            f"`ds` must hold images (H, W, C), batched or not. Received: image shape {image_spec.shape}"
        )
    if int(copies) < 1:
        raise ValueError(f"`copies` must be >= 1. Received: copies={copies}")
    pairs, has_labels = _as_pairs(ds)
    disguised = wrap(pairs.repeat(int(copies)).batch(batch_size), key, augment=augment)
    total = None if total is None else total * int(copies)

    with io.atomic_dir(out_dir, replace=replace) as tmp_dir:
        shards, label_counts, count = [], {}, 0
        writer, shard_path, shard_count = None, None, 0
        bar = _progress(total, progress)
        started = time.time()

        def close_shard():
            writer.close()
            shards.append(_shard_entry(shard_path, shard_count))

        for images, labels in disguised:
            images, labels = images.numpy(), labels.numpy()
            for image, label in zip(images, labels):
                if writer is None:
                    shard_path = os.path.join(tmp_dir, f"shard-{len(shards):05d}.tfrecord")
                    writer, shard_count = tf.io.TFRecordWriter(shard_path), 0
                writer.write(_example(image, label, dtype))
                shard_count += 1
                count += 1
                if has_labels:
                    label_counts[int(label)] = label_counts.get(int(label), 0) + 1
                if shard_count == shard_size:
                    close_shard()
                    writer = None
            if bar is not None:
                bar.update(count)
        if writer is not None:
            close_shard()
        if bar is not None:
            bar.update(count, finalize=True)  # ends the bar's line, also when the total was unknown
        manifest = build_manifest(key.identity.to_dict(), key.spec.image_shape, dtype=dtype, shards=shards,
                                  label_counts=label_counts if has_labels else None, class_names=class_names,
                                  copies=int(copies), augmented=augment is not None, started=started)
        write_manifest(tmp_dir, manifest)
    return manifest


def build_manifest(identity: dict, image_shape, *, dtype: str, shards: list[dict], label_counts: dict | None,
                   class_names=None, copies: int = 1, augmented: bool = False, started: float | None = None) -> dict:
    """The manifest of a disguised data set (`label_counts` None: no labels). Public fields only.

    Shared by `export_disguised` and the Beam pipeline (`tfdisguise.beam`), so both write the same format.
    """
    present, label_counts = label_counts is not None, label_counts or {}
    return {
        "format": FORMAT,
        "version": VERSION,
        **identity,
        "image_shape": list(image_shape),
        "dtype": dtype,
        "count": sum(shard["count"] for shard in shards),
        "copies": int(copies),
        "augmented": bool(augmented),
        "shards": shards,
        "labels": {
            "present": present,
            "num_classes": (max(label_counts) + 1) if label_counts else 0,
            "counts": {str(k): v for k, v in sorted(label_counts.items())},
            "class_names": list(class_names) if class_names else None,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3) if started is not None else 0.0,
    }


def write_manifest(directory: str, manifest: dict) -> None:
    """Writes `manifest.json` into `directory`: the last file of a data set, after every shard.

    A manifest that `read_manifest` would refuse as too large is refused here, before the data set looks complete.
    """
    text = json.dumps(manifest, indent=2) + "\n"
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise ShardError(f"The manifest of {len(manifest['shards'])} shards would be {len(text.encode('utf-8'))} "
                         f"bytes, over the {MAX_MANIFEST_BYTES} bytes a reader accepts; use larger shards "
                         f"(`shard_size`).")
    with tf.io.gfile.GFile(os.path.join(directory, MANIFEST), "w") as f:
        f.write(text)


def write_shard(path: str, images: np.ndarray, labels: np.ndarray, dtype: str = "float32") -> dict:
    """Writes disguised `images` (and `labels`) as one TFRecord shard; returns its manifest entry."""
    with tf.io.TFRecordWriter(path) as writer:
        for image, label in zip(images, labels):
            writer.write(_example(image, label, dtype))
    return _shard_entry(path, len(images))


def _shard_entry(path: str, count: int) -> dict:
    """A written shard's manifest entry."""
    return {"file": os.path.basename(path), "count": int(count), "sha256": _sha256(path)}


def check_output_dir(out_dir: str, *, overwrite: bool, option: str = "overwrite=True") -> tuple[str, ...]:
    """What `export_disguised` will replace in `out_dir` (empty: nothing); FileExistsError if it must not touch it.

    Only a disguised data set may be replaced, and only with `overwrite`: a
    directory that holds a valid manifest of ours and the shards it lists,
    nothing else, each a regular file (not a symlink, not a directory), each
    shard named as we name shards (shard-NNNNN.tfrecord) and matching the
    manifest's sha256. A planted manifest that lists someone's photos cannot
    get them deleted. Returns those file names, the only things a replacement
    removes (`io.atomic_dir`). `option` is how the caller spells "overwrite" in
    messages (the command line says --overwrite).
    """
    out_dir = out_dir.rstrip("/")
    if not tf.io.gfile.exists(out_dir):
        return ()
    if not tf.io.gfile.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory; refusing to replace it (even with "
                              f"{option}). Choose another output path.")

    def refuse(why: str):
        raise FileExistsError(f"{out_dir} exists and is not a disguised data set ({why}); refusing to replace it "
                              f"(even with {option}). Nothing was deleted; choose another output path.")

    try:
        manifest, problem = read_manifest(out_dir), None
    except ShardError as e:
        manifest, problem = None, str(e)
    if problem:
        refuse(problem)
    ours = [MANIFEST, *(shard["file"] for shard in manifest["shards"])]
    others = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(out_dir) if name.rstrip("/") not in ours)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"{out_dir} holds a disguised data set but also other files ({shown}); refusing to "
                              f"replace it (even with {option}). Move them, or choose another output path.")
    for shard in manifest["shards"]:
        if not _OUR_SHARD.fullmatch(shard["file"]):
            refuse(f"its manifest lists {shard['file']!r}, which is not a shard name tfdisguise writes")
    for name in ours:
        path = os.path.join(out_dir, name)
        if io.is_local(path):
            mode = os.lstat(path).st_mode if os.path.lexists(path) else None
            if mode is None:
                refuse(f"{name}, listed in its manifest, is missing")
            if not stat.S_ISREG(mode):
                refuse(f"{name} is not a regular file")
        elif not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            refuse(f"{name}, listed in its manifest, is missing or a directory")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite it (pass {option} to replace "
                              f"the data set in it).")
    for shard in manifest["shards"]:
        if _sha256(os.path.join(out_dir, shard["file"])) != shard["sha256"]:
            refuse(f"{shard['file']} does not match the sha256 its manifest records")
    return tuple(ours)


def _progress(total, enabled):
    if not enabled:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name="image")


def read_manifest(out_dir: str) -> dict[str, Any]:
    """Reads and checks `manifest.json` of a disguised data set; any problem is a ShardError."""
    path = os.path.join(out_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        # A mistyped path is the likelier mistake: say so rather than blame a data set that is not there.
        if not tf.io.gfile.exists(out_dir):
            raise ShardError(f"{out_dir} does not exist: pass the directory that `tfdisguise disguise --out` wrote.")
        if not tf.io.gfile.isdir(out_dir):
            raise ShardError(f"{out_dir} is a file, not a directory: pass the directory that `tfdisguise disguise "
                             f"--out` wrote.")
        raise ShardError(f"{out_dir} has no {MANIFEST}: it is not a disguised data set, or its export did not finish.")
    # Checked before a byte is read: a FIFO or /dev/zero would hang the reader, a huge file would fill memory.
    try:
        manifest = io.read_json(path, max_bytes=MAX_MANIFEST_BYTES, what="Manifest", inside=out_dir, error=ShardError)
    except ShardError:
        raise
    except (ValueError, RecursionError) as e:
        raise ShardError(f"{path} is corrupt ({type(e).__name__}: {e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a tfdisguise shards manifest.")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path} has version {manifest.get('version')!r}; this tfdisguise reads version {VERSION}.")
    _check_manifest(manifest, path)
    return manifest


_SHARD_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(manifest: dict, path: str) -> None:
    """Every field a reader relies on, present and of the right kind; the spec and `image_shape` agreeing."""

    def field(container: dict, name: str, kind, where: str = ""):
        if name not in container:
            raise ShardError(f"{path} is missing the field {where}{name!r}.")
        value = container[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ShardError(f"{path}: {where}{name!r} must be {expected}. Received: {value!r:.100}")
        return value

    try:
        identity = manifest_identity(manifest)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise ShardError(f"{path}: invalid spec or fingerprint ({e}).") from None
    shape = field(manifest, "image_shape", list)
    if tuple(shape) != identity.spec.image_shape:
        raise ShardError(f"{path}: image_shape {shape} is not the spec's image shape "
                         f"{list(identity.spec.image_shape)}.")
    if field(manifest, "dtype", str) not in DTYPES:
        raise ShardError(f"{path}: dtype must be one of {DTYPES}. Received: {manifest['dtype']!r:.100}")
    count = field(manifest, "count", int)
    total, names = 0, set()
    for i, shard in enumerate(field(manifest, "shards", list)):
        if not isinstance(shard, dict):
            raise ShardError(f"{path}: shards[{i}] must be an object. Received: {shard!r:.100}")
        name = field(shard, "file", str, f"shards[{i}].")
        # A plain file name, so that a reader opens only files inside the data set's directory.
        if not _SHARD_FILE.fullmatch(name) or name == MANIFEST or name in names:
            raise ShardError(f"{path}: shards[{i}].file must name a file inside the data set's directory (no '/', "
                             f"no '..', no leading '.', no repeats). Received: {name!r:.100}")
        names.add(name)
        shard_count = field(shard, "count", int, f"shards[{i}].")
        if shard_count < 0:
            raise ShardError(f"{path}: shards[{i}].count must be >= 0. Received: {shard_count}")
        if not _SHA256.fullmatch(field(shard, "sha256", str, f"shards[{i}].")):
            raise ShardError(f"{path}: shards[{i}].sha256 must be 64 hex digits. Received: {shard['sha256']!r:.100}")
        total += shard_count
    if count != total:
        raise ShardError(f"{path}: count is {count}, but the shards' counts add up to {total}.")
    labels = field(manifest, "labels", dict)
    if field(labels, "num_classes", int, "labels.") < 0:
        raise ShardError(f"{path}: labels.num_classes must be >= 0. Received: {labels['num_classes']}")


def _records(path: str) -> int:
    """How many records a TFRecord file holds, from its framing alone (the sha256 vouches for the bytes)."""
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        while f.tell() < size:
            header = f.read(12)  # uint64 length + its uint32 CRC
            if len(header) < 12:
                raise ShardError(f"Shard {path} is truncated.")
            (length,) = struct.unpack("<Q", header[:8])
            if f.tell() + length + 4 > size:
                raise ShardError(f"Shard {path} is truncated.")
            f.seek(length + 4, 1)  # the data and its CRC
            count += 1
    return count


def manifest_identity(manifest: dict) -> Identity:
    """The public identity (spec + fingerprint) a manifest records."""
    return Identity.from_dict(manifest, source="the shards manifest")


def load_disguised(out_dir: str, *, key: Key | None = None, verify: bool = True) -> tf.data.Dataset:
    """A dataset of `(image, label)` from `export_disguised` output.

    With `verify=True` (the default) each shard's sha256 is checked first. With
    `key`, the data set's fingerprint and spec must match it.
    """
    manifest = read_manifest(out_dir)
    if key is not None:
        key.check_matches(manifest_identity(manifest), f"The data set in {out_dir}")
    paths, counts = [], []
    image_bytes = int(np.prod(manifest["image_shape"])) * np.dtype(_LITTLE[manifest["dtype"]]).itemsize
    for shard in manifest["shards"]:
        path = os.path.join(out_dir, shard["file"])
        if not tf.io.gfile.exists(path):
            raise ShardError(f"Shard {path} listed in the manifest is missing.")
        # Before anything opens it (with or without `verify`): a FIFO or a device would hang every reader, a
        # symlink could make this read a file from elsewhere, and no shard of `count` records is larger.
        io.check_regular_file(path, max_bytes=shard["count"] * (image_bytes + _RECORD_OVERHEAD), what="Shard",
                              inside=out_dir, error=ShardError)
        if verify:
            if _sha256(path) != shard["sha256"]:
                raise ShardError(f"Shard {path} is corrupt: its sha256 does not match the manifest.")
            found = _records(path)
            if found != shard["count"]:
                raise ShardError(f"Shard {path} holds {found} records, but the manifest says {shard['count']}.")
        paths.append(path)
        counts.append(shard["count"])
    shape = tuple(manifest["image_shape"])
    stored = tf.float16 if manifest["dtype"] == "float16" else tf.float32
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(ex["image"], stored, little_endian=True), shape)
        return tf.cast(image, tf.float32), ex["label"]

    def shard_records(path, count):
        # Each shard's count is checked as it is read: a wrong one fails at that shard, not at the end.
        return tf.data.TFRecordDataset(path).apply(tf.data.experimental.assert_cardinality(count))

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(counts, tf.int64)))
    ds = ds.flat_map(shard_records).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(manifest["count"]))
