"""Streaming disguised batches through the tf.data service: the key stays on the owner's machines.

The owner runs the dispatcher and the workers (`tfdisguise stream`); they hold the key, because the dataset
they run is `wrap(...)`, whose graph carries the key's matrices. The cloud trainer reads finished batches by
dataset id (`tfdisguise train --stream grpc://HOST:PORT --dataset-id ID`) and never sees the key. Unlike shards,
every epoch draws fresh noise (and a fresh owner-side augmentation).

Three datasets are registered under one name: `NAME` (the training batches, repeated forever), `NAME-val`
(the validation batches, one pass) and `NAME-info` (one JSON string: counts, batch size, the public identity,
the element spec). The trainer needs nothing else.

What the tf.data service does not offer: transport security and authentication. Anyone who reaches the
dispatcher's port can read the disguised batches (not the key). Run it inside the owner's VPN, or reach it
through an SSH tunnel (`ssh -L PORT:localhost:PORT owner-host`). The dispatcher's `work_dir` journals the
registered datasets' graphs, which hold key material: it is created private (0700) and belongs on the owner's
disk.

Example (one process for both sides; in practice they are two machines):

    service = serve(key, data, port=0, name="mnist")          # owner: dispatcher + workers
    train_ds, val_ds, info = read(service.target, "mnist")    # trainer: no key
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from tfdisguise import io
from tfdisguise.data import wrap
from tfdisguise.key import Key

__all__ = ["StreamService", "read", "serve"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class StreamService:
    """A running dispatcher and its workers with the datasets registered; `stop()` (or `with`) ends them."""

    def __init__(self, dispatcher, workers, name: str, info: dict):
        self.dispatcher, self.workers, self.name, self.info = dispatcher, workers, name, info

    @property
    def target(self) -> str:
        """The dispatcher's address for `read`, e.g. grpc://localhost:5050."""
        return self.dispatcher.target

    def restart_worker(self, index: int = 0):
        """Stops worker `index` and starts a fresh one on the same dispatcher (a worker lost and replaced).

        Readers keep going: the dispatcher hands the new worker its tasks, and the stream, which repeats
        forever, never ends for the trainer. Returns the new worker.
        """
        self.workers[index].stop()
        self.workers[index] = _start_worker(self.dispatcher)
        return self.workers[index]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.dispatcher.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _start_worker(dispatcher):
    """A tf.data service worker registered with `dispatcher` (in this process)."""
    service = tf.data.experimental.service
    address = dispatcher.target.split("://", 1)[1]
    return service.WorkerServer(service.WorkerConfig(dispatcher_address=address))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"`name` must be 1-100 letters, digits, '.', '_' or '-'. Received: name={name!r}")
    return name


def serve(key: Key, train, *, validation=None, port: int = 0, workers: int = 1, name: str = "tfdisguise",
          batch_size: int = 128, augment=None, work_dir: str | None = None, shuffle: int = 10000) -> StreamService:
    """Starts a dispatcher on `port` and `workers` workers, and registers `train` (and `validation`) disguised.

    `train` and `validation` are `tfdisguise.datasets.ImageData` (plain images and labels, on the owner's
    side). Training batches are shuffled, augmented with `augment` (see `wrap`) and disguised with fresh
    noise on every pass; the stream repeats forever and the trainer counts its steps from `info["count"]`.
    With `work_dir`, the dispatcher journals its state there (fault-tolerant mode) and restarts from it.
    """
    if not isinstance(key, Key):
        raise TypeError(f"`key` must be a tfdisguise.Key. Received: key={type(key).__name__}")
    name = _check_name(name)
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1. Received: workers={workers}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    service = tf.data.experimental.service
    if work_dir is not None:
        io.makedirs(work_dir, mode=0o700)  # it journals the datasets' graphs, key material included
        os.chmod(work_dir, 0o700)
    dispatcher = service.DispatchServer(service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None))
    started = [_start_worker(dispatcher) for _ in range(workers)]

    plain = tf.data.Dataset.from_tensor_slices((train.x, train.y))
    train_ds = wrap(plain.shuffle(min(shuffle, len(train))).batch(batch_size).repeat(), key, augment=augment,
                    prefetch=False)
    service.register_dataset(dispatcher.target, train_ds, dataset_id=name)
    info = {"name": name, "count": len(train), "batch_size": batch_size, "num_classes": int(train.num_classes),
            "image_shape": list(key.spec.image_shape), "validation_count": 0, **key.identity.to_dict(),
            "augmented": augment is not None}
    if validation is not None and len(validation):
        val_ds = wrap(tf.data.Dataset.from_tensor_slices((validation.x, validation.y)).batch(batch_size), key,
                      prefetch=False)
        service.register_dataset(dispatcher.target, val_ds, dataset_id=name + "-val")
        info["validation_count"] = len(validation)
    service.register_dataset(dispatcher.target, tf.data.Dataset.from_tensors(json.dumps(info)),
                             dataset_id=name + "-info")
    return StreamService(dispatcher, started, name, info)


def _spec(info: dict):
    shape = tf.TensorShape([None, *info["image_shape"]])
    return (tf.TensorSpec(shape, tf.float32), tf.TensorSpec([None], tf.int64))


def read(target: str, name: str) -> tuple[tf.data.Dataset, tf.data.Dataset | None, dict]:
    """(training batches, validation batches or None, info) from a stream `serve` started at `target`.

    The training stream never ends: take `info["count"] // info["batch_size"]` steps per epoch.
    """
    name = _check_name(name)
    if not isinstance(target, str) or not target.startswith(("grpc://", "grpc+local://")):
        raise ValueError(f"`target` must be the dispatcher's address, grpc://HOST:PORT. Received: target={target!r}")
    service = tf.data.experimental.service
    try:
        blob = next(iter(service.from_dataset_id("parallel_epochs", target, name + "-info",
                                                 element_spec=tf.TensorSpec([], tf.string))))
    except (tf.errors.OpError, StopIteration) as e:
        raise ConnectionError(f"No tfdisguise stream {name!r} at {target}: {getattr(e, 'message', e)}") from None
    info = json.loads(blob.numpy().decode("utf-8"))
    spec = _spec(info)
    train = service.from_dataset_id("parallel_epochs", target, name, element_spec=spec)
    val = None
    if info.get("validation_count"):
        val = service.from_dataset_id("parallel_epochs", target, name + "-val", element_spec=spec)
    return train, val, info


def default_work_dir(name: str) -> str:
    """Where `tfdisguise stream` journals a stream's dispatcher state by default (private, owner side)."""
    return os.path.join(os.path.expanduser("~"), ".tfdisguise", "streams", _check_name(name))
