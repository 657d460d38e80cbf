"""Streaming fresh noise to the cloud: the owner pushes key-free epochs to storage, the cloud reads them.

Why this shape. The tf.data service is a compute service: whoever reaches its dispatcher registers a dataset
(a graph) and the workers run it, and the dispatcher hands any client the graphs registered with it. When
the owner ran the service for the cloud, with the key-bearing `wrap(...)` graph registered, the cloud could
run code beside the key (a registered `tf.io.read_file(".../key.json")` returned the key) and read the key's
permutation and matrices out of the registered graph (`DispatcherService/GetDatasetDef`). A compute service
that accepts registered work belongs wholly on one side of the trust boundary. So this module runs no
network service at all: the owner writes (`push`), the cloud reads (`read`), and what crosses is storage
holding what `tfdisguise disguise` already uploads, verified shards with a key-free manifest
(`tfdisguise.shards`), one shard directory per epoch, each with fresh noise.

A stream directory (local, or any path `tf.io.gfile` reaches, such as gs://bucket/stream):

    validation/        the validation images, disguised once (only if there are any)
    epoch-00000/ ...   one complete shard directory per epoch: fresh noise, and a fresh owner-side
                       augmentation with `augment`
    stream.json        key-free: counts, batch size, epochs planned, the public identity (spec + fingerprint)
    progress/          empty files `epoch-NNNNN` the reader leaves as it starts each epoch (only with `ahead`)

Each directory appears under its final name only when it is complete (the shard writer's temporary sibling
and rename). `stream.json` is written after `validation/` and `epoch-00000/`, so a reader that finds it can
start at once. On object stores, where a directory rename is a copy, the reader also waits until the
manifest and every shard it lists are present, then verifies each shard's sha256 and record count.

Look-ahead: by default the owner writes every epoch as fast as it can (`ahead=None`). With `ahead=K` it
writes epoch e only once the reader has started epoch e - K, which the reader's `progress/epoch-NNNNN`
file shows; the owner only asks whether that file exists and reads nothing the cloud wrote. The reader
needs write access to the stream directory for this; the owner waits (and says so) until the file appears.
Epochs the reader is done with stay in place: delete them when training ends.

The cloud side holds no key: the shards are key-free, so the cloud may run its own tf.data service
(dispatcher and workers on its own machines) over them, registering `load_disguised(epoch_dir(path, e))`
epoch by epoch (`read`'s own pipeline waits for epochs in Python, inside the trainer's process).

Inside the owner's boundary the tf.data service stays available: an owner who trains on the owner's own
machines may run `wrap(ds, key)` on a tf.data service whose dispatcher and workers are all owner machines
that nobody else can reach (its workers hold the key and its dispatcher serves the key-bearing graph, so it
must never face the cloud).

Example (both sides in one process here; in practice two machines and a bucket between them):

>>> import os, tempfile
>>> import numpy as np
>>> from tfdisguise.datasets import ImageData
>>> from tfdisguise.key import Key
>>> key = Key.generate(image_shape=(8, 8, 1), block_size=4, noise=10)
>>> images = ImageData(np.zeros((10, 8, 8, 1), "uint8"), np.arange(10) % 2)
>>> out = os.path.join(tempfile.mkdtemp(), "stream")
>>> info = push(key, images, out, epochs=2, batch_size=4)              # owner
>>> train, val, info = read(out)                                       # cloud: no key
>>> [len(labels) for _, labels in train], info["count"], val is None   # two epochs of 4 + 4 + 2
([4, 4, 2, 4, 4, 2], 10, True)
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfdisguise import io
from tfdisguise.identity import Identity
from tfdisguise.key import Key
from tfdisguise.shards import DTYPES, ShardError, export_disguised, load_disguised, read_manifest

__all__ = ["STREAM_FILE", "StreamError", "check_not_service", "epoch_dir", "failure", "push", "read"]

STREAM_FILE = "stream.json"
FORMAT = "tfdisguise.stream"
VERSION = 1
VALIDATION = "validation"
PROGRESS = "progress"
# Every message a reader's pipeline raises starts with this, so that `failure` can find it inside TensorFlow's
# error (the pipeline's Python part runs inside `from_generator`, which re-raises as tf.errors.UnknownError).
_PREFIX = "tfdisguise stream: "

log = logging.getLogger(__name__)


class StreamError(ValueError):
    """A stream directory is not what it should be: not a stream, a different key, epochs of the wrong size."""


def epoch_dir(path: str, epoch: int) -> str:
    """The shard directory of `epoch` in the stream at `path`."""
    return f"{path.rstrip('/')}/epoch-{int(epoch):05d}"


def _progress_file(path: str, epoch: int) -> str:
    return f"{path.rstrip('/')}/{PROGRESS}/epoch-{int(epoch):05d}"


def check_not_service(path, name: str = "path") -> None:
    """Refuses a tf.data service address (`grpc://...`) where a stream directory belongs, saying why."""
    if isinstance(path, str) and path.startswith(("grpc://", "grpc+local://")):
        raise ValueError(
            f"`{name}` must be a stream directory (local or gs://...), not a tf.data service address. "
            f"Received: {name}={path!r}. tfdisguise no longer runs the tf.data service on the owner's side: "
            "whoever reaches a dispatcher can run code on its workers and read the registered graph, which held "
            "the key. The owner now pushes key-free epochs to storage (`tfdisguise stream --out DIR`) and the "
            "trainer reads that directory (`tfdisguise train --stream DIR`).")


def _as_dataset(data, *, shuffle: bool, seed: int | None, name: str) -> tf.data.Dataset:
    """`data` (ImageData or a tf.data.Dataset) as a dataset that a new iteration reshuffles (ImageData only)."""
    from tfdisguise.datasets import ImageData

    if isinstance(data, ImageData):
        ds = tf.data.Dataset.from_tensor_slices((data.x, data.y))
        if shuffle and len(data) > 1:
            ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
        return ds
    if isinstance(data, tf.data.Dataset):
        return data
    raise TypeError(f"`{name}` must be a tfdisguise.datasets.ImageData or a tf.data.Dataset of (image, label). "
                    f"Received: {name}={type(data).__name__}")


def _check_new_dir(out_dir: str) -> None:
    if not tf.io.gfile.exists(out_dir):
        return
    if not tf.io.gfile.isdir(out_dir) or tf.io.gfile.listdir(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not an empty directory; a stream starts in a new "
                              f"one (a reader could mix an old stream's epochs with the new ones). Choose another "
                              "directory.")


def push(
    key: Key,
    train,
    out_dir: str,
    *,
    epochs: int,
    validation=None,
    batch_size: int = 128,
    augment=None,
    ahead: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    shard_size: int = 10000,
    dtype: str = "float32",
    class_names: list[str] | None = None,
    poll_interval: float = 0.5,
    on_epoch=None,
) -> dict[str, Any]:
    """Writes `epochs` disguised epochs of `train` to `out_dir`, each with fresh noise; returns `stream.json`.

    `train` and `validation` are `tfdisguise.datasets.ImageData` or `tf.data.Dataset`s of `(image, label)`
    (batched or not, as for `export_disguised`). An ImageData is reshuffled every epoch (`shuffle`, from
    `seed`); a dataset is read once per epoch as it is, so give it its own `shuffle()`. Every epoch must hold
    the same number of images. `augment` (see `wrap`) augments the plain training images before the
    disguise, afresh every epoch. `validation` is disguised once, without augmentation.

    `batch_size` is the batch size `read` uses unless its caller chooses another (it is also the disguise's
    batch size here). `ahead=K` keeps the owner at most K epochs ahead of the reader (see the module
    docstring); `on_epoch(epoch, manifest)` is called after each epoch is in place.

    Nothing here listens on the network: the owner's machine only writes to `out_dir`, a new or empty
    directory. Paths go through `tf.io.gfile`, so gs:// works.
    """
    if not isinstance(key, Key):
        raise TypeError(f"`key` must be a tfdisguise.Key. Received: key={type(key).__name__}")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("shard_size", shard_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
    if ahead is not None and (not isinstance(ahead, (int, np.integer)) or isinstance(ahead, bool) or ahead < 1):
        raise ValueError(f"`ahead` must be None (write every epoch at once) or an integer >= 1. Received: "
                         f"ahead={ahead!r}")
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    check_not_service(out_dir, "out_dir")
    out_dir = str(out_dir).rstrip("/")
    train_ds = _as_dataset(train, shuffle=shuffle, seed=seed, name="train")
    val_ds = None if validation is None else _as_dataset(validation, shuffle=False, seed=None, name="validation")
    class_names = class_names or getattr(train, "class_names", None)
    _check_new_dir(out_dir)
    io.makedirs(out_dir)
    options = {"shard_size": int(shard_size), "batch_size": int(batch_size), "class_names": class_names,
               "progress": False, "dtype": dtype}
    info = {"format": FORMAT, "version": VERSION, **key.identity.to_dict(),
            "image_shape": list(key.spec.image_shape), "epochs": int(epochs), "batch_size": int(batch_size),
            "count": 0, "validation_count": 0, "num_classes": 0, "class_names": class_names,
            "augmented": augment is not None, "dtype": dtype, "ahead": None if ahead is None else int(ahead)}
    num_classes = len(class_names) if class_names else 0
    if val_ds is not None:
        manifest = export_disguised(val_ds, key, f"{out_dir}/{VALIDATION}", **options)
        info["validation_count"] = manifest["count"]
        num_classes = max(num_classes, manifest["labels"]["num_classes"])
    for epoch in range(int(epochs)):
        if ahead is not None and epoch >= ahead:
            _wait_for_reader(out_dir, epoch - int(ahead), poll_interval)
        manifest = export_disguised(train_ds, key, epoch_dir(out_dir, epoch), augment=augment, **options)
        if epoch == 0:
            if not manifest["count"]:
                raise ValueError("`train` holds no images.")
            info["count"] = manifest["count"]
            info["num_classes"] = max(num_classes, manifest["labels"]["num_classes"])
            io.write_json(f"{out_dir}/{STREAM_FILE}", info, mode=0o644)  # the reader starts once this is there
        elif manifest["count"] != info["count"]:
            raise ValueError(f"`train` gave {manifest['count']} images in epoch {epoch} but {info['count']} in "
                             "epoch 0: every epoch of a stream must hold the same images (a finite dataset, "
                             "without `repeat()`).")
        if on_epoch is not None:
            on_epoch(epoch, manifest)
    return info


def _wait_for_reader(out_dir: str, epoch: int, poll_interval: float) -> None:
    """Blocks until the reader has started `epoch` (its progress file exists); says so once if it must wait."""
    marker = _progress_file(out_dir, epoch)
    said = False
    while not tf.io.gfile.exists(marker):
        if not said:
            log.info("waiting for the reader to start epoch %d (%s) before writing more", epoch, marker)
            said = True
        time.sleep(poll_interval)


def _read_info(path: str) -> dict:
    file = f"{path}/{STREAM_FILE}"
    try:
        info = io.read_json(file, what="Stream description", error=StreamError)
    except StreamError:
        raise
    except (ValueError, RecursionError) as e:
        raise StreamError(f"{file} is corrupt ({type(e).__name__}: {e}).") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise StreamError(f"{file} is not a tfdisguise stream description.")
    if info.get("version") != VERSION:
        raise StreamError(f"{file} has version {info.get('version')!r}; this tfdisguise reads version {VERSION}.")
    for name, kind in (("epochs", int), ("batch_size", int), ("count", int), ("validation_count", int),
                       ("num_classes", int), ("image_shape", list)):
        value = info.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise StreamError(f"{file}: {name!r} must be a {'non-negative integer' if kind is int else 'list'}. "
                              f"Received: {value!r:.100}")
    if info["epochs"] < 1 or info["batch_size"] < 1 or info["count"] < 1:
        raise StreamError(f"{file}: 'epochs', 'batch_size' and 'count' must be >= 1.")
    identity = Identity.from_dict(info, source=file)
    if tuple(info["image_shape"]) != identity.spec.image_shape:
        raise StreamError(f"{file}: image_shape {info['image_shape']} is not the spec's "
                          f"{list(identity.spec.image_shape)}.")
    return info


def _wait(what: str, ready, timeout: float, poll_interval: float):
    """Polls `ready()` until it returns something other than None, or raises TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = ready()
        except tf.errors.OpError as e:  # storage that cannot be reached: wait as for a missing file
            found, last = None, e.message
        else:
            last = None
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            reason = f" (last error: {last})" if last else ""
            raise TimeoutError(f"{what} did not appear within {timeout:g} s{reason}.")
        time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))


def _complete_epoch(directory: str):
    """The manifest of `directory` once it and every shard it lists are there; None before."""
    if not tf.io.gfile.exists(f"{directory}/manifest.json"):
        return None
    manifest = read_manifest(directory)
    if all(tf.io.gfile.exists(f"{directory}/{shard['file']}") for shard in manifest["shards"]):
        return manifest
    return None


def read(
    path: str,
    *,
    batch_size: int | None = None,
    epochs: int | None = None,
    timeout: float = 60.0,
    poll_interval: float = 0.5,
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, dict]:
    """(training batches, validation batches or None, stream.json) of the stream that `push` writes to `path`.

    The training dataset runs through `epochs` epochs (default: every epoch the owner plans), epoch e from
    the verified shards of `epoch-0000e/`, in batches of `batch_size` (default: the stream's), one pass per
    epoch: `ceil(count / batch_size)` batches, the last one possibly short. Give `model.fit` that many
    `steps_per_epoch` and Keras epoch e trains on the owner's epoch e. Before each epoch it waits up to
    `timeout` seconds for the owner to finish writing it; then the pipeline fails with a TimeoutError's
    message naming the directory (inside a `tf.errors.OpError`; `failure` takes it out).

    `read` itself waits up to `timeout` seconds for `stream.json` and raises TimeoutError naming `path` if
    it does not appear. No key is needed or used; a `grpc://` address (the old design) is refused with an
    explanation.
    """
    check_not_service(path, "path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"`path` must be the stream's directory. Received: path={path!r}")
    if not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"`timeout` must be a number of seconds >= 0. Received: timeout={timeout!r}")
    path = path.rstrip("/")
    file = f"{path}/{STREAM_FILE}"
    try:
        _wait(f"{file}", lambda: True if tf.io.gfile.exists(file) else None, timeout, poll_interval)
    except TimeoutError as e:
        raise TimeoutError(f"No tfdisguise stream at {path}: {e} Start the owner's push to it (`tfdisguise stream "
                           "--out DIR`), or check the path, or wait longer with `timeout` (--stream-timeout on the "
                           "command line).") from None
    info = _read_info(path)
    batch_size = info["batch_size"] if batch_size is None else batch_size
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}")
    epochs = info["epochs"] if epochs is None else epochs
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or not 1 <= epochs <= info["epochs"]:
        raise ValueError(f"`epochs` must be between 1 and the {info['epochs']} epochs the owner pushes to {path}. "
                         f"Received: epochs={epochs!r}. Push more (`tfdisguise stream --epochs N`) or train fewer.")
    identity = Identity.from_dict(info, source=file)
    shape = tuple(info["image_shape"])

    def epochs_in_order():
        for epoch in range(int(epochs)):
            directory = epoch_dir(path, epoch)
            try:
                manifest = _wait(f"epoch {epoch} of {epochs} ({directory})", lambda d=directory: _complete_epoch(d),
                                 timeout, poll_interval)
                _check_epoch(manifest, directory, identity, info["count"])
                batches = load_disguised(directory).batch(int(batch_size)).prefetch(2)
            except TimeoutError as e:
                raise TimeoutError(f"{_PREFIX}{e} The owner's push (`tfdisguise stream --out DIR`) writes it; wait "
                                   "longer with `timeout` (--stream-timeout) if its epochs take longer.") from None
            except ShardError as e:
                raise StreamError(f"{_PREFIX}{e}") from None
            if info.get("ahead") is not None:
                _mark(path, epoch)
            yield from batches.as_numpy_iterator()

    spec = (tf.TensorSpec([None, *shape], tf.float32), tf.TensorSpec([None], tf.int64))
    train = tf.data.Dataset.from_generator(epochs_in_order, output_signature=spec).prefetch(tf.data.AUTOTUNE)
    val = None
    if info["validation_count"]:
        directory = f"{path}/{VALIDATION}"
        _check_epoch(read_manifest(directory), directory, identity, info["validation_count"])
        val = load_disguised(directory).batch(int(batch_size))
    return train, val, info


def _check_epoch(manifest: dict, directory: str, identity: Identity, count: int) -> None:
    found = Identity.from_dict(manifest, source=f"{directory}/manifest.json")
    if found != identity:
        raise StreamError(f"{_PREFIX}{directory} was disguised with key {found.fingerprint}, not the stream's "
                          f"{identity.fingerprint} (or with another spec): it is not part of this stream.")
    if manifest["count"] != count:
        raise StreamError(f"{_PREFIX}{directory} holds {manifest['count']} images; the stream says {count}.")


def _mark(path: str, epoch: int) -> None:
    """Leaves `progress/epoch-NNNNN` for an owner that pushes with `ahead`; read-only storage only warns."""
    try:
        io.write_text(_progress_file(path, epoch), "")
    except (OSError, tf.errors.OpError) as e:
        log.warning("could not mark epoch %d as started in %s (%s): an owner pushing with `ahead` waits for it",
                    epoch, path, e)


_FAILURE = re.compile(r"\b(TimeoutError|StreamError): (" + re.escape(_PREFIX) + r"[^\n]*)")


def failure(error: BaseException) -> Exception | None:
    """The stream's own error (TimeoutError or StreamError) inside a `tf.errors.OpError` from `read`'s pipeline.

    The pipeline's waiting and checking run in Python inside `from_generator`, which TensorFlow re-raises as
    `tf.errors.UnknownError`; this gives back the clear message for a command line. None for other errors.
    """
    match = _FAILURE.search(getattr(error, "message", None) or str(error))
    if match is None:
        return None
    kind = TimeoutError if match.group(1) == "TimeoutError" else StreamError
    return kind(match.group(2)[len(_PREFIX):])
