"""Disguised data sets for outsourcing: TFRecord shards plus a key-free manifest.

`export_disguised` writes into a temporary sibling directory and renames it into
place only after the manifest is written, so an interrupted run never leaves a
directory that looks complete. `load_disguised` verifies every shard's sha256.

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
import secrets
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfdisguise.data import image_spec_of, wrap
from tfdisguise.identity import Identity
from tfdisguise.key import Key
from tfdisguise.spec import Spec

__all__ = ["export_disguised", "load_disguised", "read_manifest", "ShardError", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "tfdisguise.shards"
VERSION = 1


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


def _example(image: np.ndarray, label: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.astype("<f4").tobytes()])),
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
) -> dict[str, Any]:
    """Disguises `ds` with `key` and writes TFRecord shards plus `manifest.json`.

    `ds` holds unbatched images, `(image, label)` pairs or dicts with "image"
    (and optionally "label"). The manifest records the public spec, the key
    fingerprint, counts, each shard's sha256 and label counts; it never holds
    key material. Paths go through `tf.io.gfile`, so `gs://` works.

    `copies=K` writes the data set K times over (pass after pass), each pass
    with fresh noise and, with `augment` (see `wrap`), a fresh owner-side
    augmentation of the plain images: K x the images for the cloud to train on.
    The copies of one image are related, so take validation data from a
    separate export (`copies=1`, no `augment`), not from a split of this one.

    Returns the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"`shard_size` must be >= 1. Received: shard_size={shard_size}")
    out_dir = out_dir.rstrip("/")
    if tf.io.gfile.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite it (pass overwrite=True).")
    image_spec, _, _ = image_spec_of(ds.element_spec)
    if image_spec.shape.rank != 3:
        raise ValueError(
            f"`ds` must hold unbatched images (H, W, C); call .unbatch() first. Received: image shape {image_spec.shape}"
        )
    if int(copies) < 1:
        raise ValueError(f"`copies` must be >= 1. Received: copies={copies}")
    pairs, has_labels = _as_pairs(ds)
    disguised = wrap(pairs.repeat(int(copies)).batch(batch_size), key, augment=augment)
    total = None if total is None else total * int(copies)

    tmp_dir = f"{out_dir}.partial-{secrets.token_hex(4)}"
    tf.io.gfile.makedirs(tmp_dir)
    try:
        shards, label_counts, count = [], {}, 0
        writer, shard_path, shard_count = None, None, 0
        bar = _progress(total, progress)
        started = time.time()

        def close_shard():
            writer.close()
            shards.append({"file": os.path.basename(shard_path), "count": shard_count, "sha256": _sha256(shard_path)})

        for images, labels in disguised:
            images, labels = images.numpy(), labels.numpy()
            for image, label in zip(images, labels):
                if writer is None:
                    shard_path = os.path.join(tmp_dir, f"shard-{len(shards):05d}.tfrecord")
                    writer, shard_count = tf.io.TFRecordWriter(shard_path), 0
                writer.write(_example(image, label))
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
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            **key.identity.to_dict(),
            "image_shape": list(key.spec.image_shape),
            "dtype": "float32",
            "count": count,
            "copies": int(copies),
            "augmented": augment is not None,
            "shards": shards,
            "labels": {
                "present": has_labels,
                "num_classes": (max(label_counts) + 1) if label_counts else 0,
                "counts": {str(k): v for k, v in sorted(label_counts.items())},
                "class_names": list(class_names) if class_names else None,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 3),
        }
        with tf.io.gfile.GFile(os.path.join(tmp_dir, MANIFEST), "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        if tf.io.gfile.exists(out_dir):
            old = f"{out_dir}.old-{secrets.token_hex(4)}"
            tf.io.gfile.rename(out_dir, old)
            tf.io.gfile.rename(tmp_dir, out_dir)
            tf.io.gfile.rmtree(old)
        else:
            tf.io.gfile.rename(tmp_dir, out_dir)
    except BaseException:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        raise
    return manifest


def _progress(total, enabled):
    if not enabled:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name="image")


def read_manifest(out_dir: str) -> dict[str, Any]:
    """Reads and checks `manifest.json` of a disguised data set."""
    path = os.path.join(out_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise ShardError(f"{out_dir} has no {MANIFEST}: it is not a disguised data set, or its export did not finish.")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            manifest = json.loads(f.read())
    except ValueError as e:
        raise ShardError(f"{path} is corrupt ({e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a tfdisguise shards manifest.")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path} has version {manifest.get('version')!r}; this tfdisguise reads version {VERSION}.")
    Spec.from_dict(manifest["spec"])
    return manifest


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
    paths = []
    for shard in manifest["shards"]:
        path = os.path.join(out_dir, shard["file"])
        if not tf.io.gfile.exists(path):
            raise ShardError(f"Shard {path} listed in the manifest is missing.")
        if verify and _sha256(path) != shard["sha256"]:
            raise ShardError(f"Shard {path} is corrupt: its sha256 does not match the manifest.")
        paths.append(path)
    shape = tuple(manifest["image_shape"])
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.float32, little_endian=True), shape)
        return image, ex["label"]

    ds = tf.data.TFRecordDataset(paths) if paths else tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(manifest["count"]))
