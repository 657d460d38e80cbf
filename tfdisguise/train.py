"""Training classifiers on plain or disguised images, with one recipe for both.

The same recipe and budget (model, optimizer, schedule, epochs, batch size)
trains the plain baseline and the disguised model, so that the accuracy gap
measures the disguise and not the recipe.

Example:

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype="uint8")
>>> y = np.arange(64) % 2
>>> key = Key.generate(Spec.create((28, 28, 1), block_size=7, noise=100))
>>> model, result = train_classifier(x, y, (x[:16], y[:16]), key=key,
...                                  config=TrainConfig(epochs=1, batch_size=32), progress=False)
>>> result.epochs, 0.0 <= result.val_accuracy <= 1.0
(1, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfdisguise import models
from tfdisguise.data import wrap
from tfdisguise.key import Key
from tfdisguise.mechanisms import disguise
from tfdisguise.recipe import STRATEGIES, TrainConfig, augmentation, compile_model

__all__ = ["TrainConfig", "TrainResult", "augmentation", "fit", "train_classifier", "train_and_save", "history_figure"]

# Images used to adapt the input normalization; more adds time, not accuracy.
ADAPT_IMAGES = 4096


@dataclasses.dataclass
class TrainResult:
    """What a training run produced (the model itself is returned beside it)."""

    model: str
    epochs: int
    train_images: int
    val_images: int
    val_accuracy: float
    seconds: float
    history: dict[str, list[float]]
    disguised: bool
    fingerprint: str | None = None
    config: dict | None = None  # the TrainConfig, so that a run says how it was trained

    def summary(self) -> str:
        kind = f"disguised (key {self.fingerprint})" if self.disguised else "plain"
        return (f"{self.model} on {self.train_images} {kind} images, {self.epochs} epochs, "
                f"{self.seconds:.0f}s: validation accuracy {self.val_accuracy:.4f} on {self.val_images} images")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def verbosity(progress: bool) -> int:
    """Keras `verbose`: a live bar on a terminal, one line per epoch in logs, nothing when off.

    A bar written to a file or pipe turns into hundreds of carriage-return updates.
    """
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2




def distribution_strategy(name: str):
    """The tf.distribute strategy for `TrainConfig.strategy` (None for "none"), on the TensorFlow backend.

    "mirrored": every local GPU, or, without GPUs, every logical CPU device (see `split_cpu`), one replica
    each, batches split between them and gradients all-reduced.
    """
    if name == "none":
        return None
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"`strategy` {name!r} is a tf.distribute strategy and needs the TensorFlow backend "
                           f"(current: {keras.backend.backend()}); on JAX use keras.distribution.DataParallel.")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")


def split_cpu(count: int) -> None:
    """Splits the CPU into `count` logical devices, so that `mirrored` has replicas on a machine without GPUs.

    Must run before TensorFlow initializes its devices (first thing in a process).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError as e:
        raise RuntimeError(f"`cpu_devices` must be set before TensorFlow starts its devices ({e}).") from None


def _one_hot(ds, num_classes):
    if ds is None:
        return None
    return ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), num_classes)), num_parallel_calls=tf.data.AUTOTUNE)


def fit(
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    *,
    input_shape,
    num_classes: int,
    adapt_data,
    config: TrainConfig,
    steps_per_epoch: int,
    progress: bool = True,
    callbacks=(),
    spec=None,
    fit_steps: int | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Builds `config.model` and fits it on batched `(image, label)` datasets.

    `spec` (the disguise's public spec, None for plain data) goes to block-aware models. `fit_steps` bounds
    each epoch of a training dataset that never ends (a stream).
    """
    keras.utils.set_random_seed(config.seed)
    strategy = distribution_strategy(config.strategy)
    if strategy is not None:
        print(f"training with {type(strategy).__name__} on {strategy.num_replicas_in_sync} replica(s)", flush=True)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = models.build(config.model, input_shape, num_classes, adapt_data=adapt_data, spec=spec,
                             **config.model_options)
        compile_model(model, config, steps_per_epoch)
    if config.label_smoothing:
        train_ds, val_ds = _one_hot(train_ds, num_classes), _one_hot(val_ds, num_classes)
    # shuffle=False: the datasets arrive shuffled (tf.data does it), and Keras's default True only warns about that
    # on every run ("`shuffle=True` was passed, but will be ignored").
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=fit_steps,
                        verbose=verbosity(progress), callbacks=list(callbacks), shuffle=False)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    key: Key | None = None,
    config: TrainConfig | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> tuple[keras.Model, TrainResult]:
    """Trains on plain images, or, with `key`, on images disguised on the fly by `wrap`.

    Fresh noise is drawn every epoch. Validation images are disguised once with
    the same key, as the owner's client would disguise queries. With
    `config.augment`, the training images are augmented before the disguise
    (plain training gets the same augmentation).
    """
    config = config or TrainConfig()
    num_classes = num_classes or int(max(y.max(), validation[1].max() if validation else 0)) + 1
    started = time.time()
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
    train = train.batch(config.batch_size)
    adapt = x[:ADAPT_IMAGES]
    val_ds = None
    augment = augmentation(config.augment) if config.augment else None
    if key is not None:
        train = wrap(train, key, augment=augment)
        adapt = disguise(adapt, key)
        if validation is not None:
            validation = (disguise(validation[0], key), validation[1])
    else:
        if augment is not None:
            train = train.map(lambda images, labels: (augment(tf.cast(images, "float32"), training=True), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
        train = train.prefetch(tf.data.AUTOTUNE)
        adapt = adapt.astype("float32")
    if validation is not None:
        val_ds = tf.data.Dataset.from_tensor_slices(validation).batch(512)
    steps = -(-len(x) // config.batch_size)
    model, history = fit(train, val_ds, input_shape=x.shape[1:], num_classes=num_classes, adapt_data=adapt,
                         config=config, steps_per_epoch=steps, progress=progress,
                         spec=None if key is None else key.spec)
    val_acc = float(history["val_accuracy"][-1]) if "val_accuracy" in history else float("nan")
    result = TrainResult(
        model=config.model, epochs=config.epochs, train_images=len(x),
        val_images=0 if validation is None else len(validation[0]), val_accuracy=val_acc,
        seconds=time.time() - started, history=history, disguised=key is not None,
        fingerprint=None if key is None else key.fingerprint, config=dataclasses.asdict(config),
    )
    return model, result


def history_figure(history: dict[str, Any], title: str = ""):
    """Training curves (loss and accuracy per epoch) as a matplotlib Figure."""
    from matplotlib.ticker import MaxNLocator

    from tfdisguise.plots import new_figure

    fig, axes = new_figure(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o", label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def train_and_save(
    out: str,
    config: TrainConfig,
    *,
    source: str | None = None,
    key_path: str | None = None,
    shards: str | None = None,
    stream: str | None = None,
    stream_timeout: float = 60.0,
    validation_fraction: float = 0.2,
    limit: int | None = None,
) -> TrainResult:
    """The `tfdisguise train` job: trains, then writes model.keras, history.json and history.png to `out`
    (plus disguise.json, the public spec and fingerprint, when the data was disguised).

    Plain (`source`), on the fly (`source` + `key_path`), or from disguised
    shards (`shards`, split by `validation_fraction` in shard order), or from
    the directory an owner's `tfdisguise.stream.push` writes to (`stream`: epoch
    e trains on the owner's epoch e, each with fresh noise; the owner's
    validation split applies; each epoch is waited for up to `stream_timeout`
    seconds).
    """
    import os

    from tfdisguise import datasets, io
    from tfdisguise.plots import save_figure
    from tfdisguise.shards import load_disguised, manifest_identity, read_manifest

    if sum(v is not None for v in (source, shards, stream)) != 1:
        raise ValueError("Give exactly one of `source`, `shards` and `stream`.")
    if stream is not None:
        from tfdisguise import stream as streaming
        from tfdisguise.identity import Identity

        if key_path or config.augment:
            raise ValueError("A stream arrives disguised (and augmented, if the owner chose to) from the owner's "
                             "push; the trainer takes neither a key nor `augment`.")
        streaming.check_not_service(stream, "stream")
        train_ds, val_ds, info = streaming.read(stream, batch_size=config.batch_size, epochs=config.epochs,
                                                timeout=stream_timeout)
        n_train, n_val = info["count"], info["validation_count"]
        # One pass over the owner's epoch e is Keras epoch e: fit keeps one iterator across epochs with these steps.
        steps = fit_steps = -(-n_train // config.batch_size)
        # Epoch 0 once more, apart from the training iterator, so that adapting does not shift the epochs.
        adapt = np.stack([x for x, _ in load_disguised(streaming.epoch_dir(stream, 0)).take(ADAPT_IMAGES)
                          .as_numpy_iterator()])
        identity = Identity.from_dict(info, f"the stream at {stream}")
        image_shape, num_classes = info["image_shape"], info["num_classes"]
    elif shards is not None:
        if key_path:
            raise ValueError("Shards are already disguised; do not pass a key with `shards`.")
        if config.strategy != "none":
            # Seen with TF 2.21 / Keras 3.15: MirroredStrategy over 2 logical CPUs on shards fails in the second
            # replica's first convolution ("input depth must be evenly divisible by filter depth: 1 vs 32"),
            # while the same training through `wrap` works. Refused until that is understood.
            raise ValueError(f"`strategy` {config.strategy!r} does not work with `shards` yet (it fails inside "
                             "TensorFlow on the second replica); to use it, train on the fly from the plain images and "
                             "the key (through `wrap`), or train on the shards without it.")
        if config.augment:
            raise ValueError("Shards are already disguised and cannot be augmented (augmentation must come before "
                             "the disguise): export them with `export_disguised(..., copies=K, augment=...)`.")
        manifest = read_manifest(shards)
        n = manifest["count"]
        n_val = int(round(n * validation_fraction))
        ds = load_disguised(shards)
        if limit:
            ds, n = ds.take(limit), min(n, limit)
        n_train = n - n_val
        train_ds = ds.take(n_train).shuffle(min(n, 20000), seed=config.seed).batch(config.batch_size)
        train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
        val_ds = ds.skip(n_train).batch(512) if n_val else None
        steps, fit_steps = -(-n_train // config.batch_size), None
        adapt = np.stack([x for x, _ in ds.take(ADAPT_IMAGES).as_numpy_iterator()])
        identity = manifest_identity(manifest)
        image_shape, num_classes = manifest["image_shape"], manifest["labels"]["num_classes"]
    if source is None:  # shards or a stream: disguised batches, no key here
        started = time.time()
        try:
            model, history = fit(train_ds, val_ds, input_shape=image_shape, num_classes=max(2, num_classes),
                                 adapt_data=adapt, config=config, steps_per_epoch=steps, spec=identity.spec,
                                 fit_steps=fit_steps)
        except tf.errors.OpError as e:
            # An epoch that never arrived (or failed its checks) surfaces inside TensorFlow's error: say it plainly.
            found = streaming.failure(e) if stream is not None else None
            if found is None:
                raise
            raise found from None
        result = TrainResult(model=config.model, epochs=config.epochs, train_images=n_train, val_images=n_val,
                             val_accuracy=float(history.get("val_accuracy", [float("nan")])[-1]),
                             seconds=time.time() - started, history=history, disguised=True,
                             fingerprint=identity.fingerprint, config=dataclasses.asdict(config))
    else:
        key = Key.load(key_path) if key_path else None
        train = datasets.load(source, "train", validation_fraction=validation_fraction, seed=config.seed, limit=limit)
        val = datasets.load(source, "validation", validation_fraction=validation_fraction, seed=config.seed)
        model, result = train_classifier(train.x, train.y, (val.x, val.y) if len(val) else None, key=key,
                                         config=config, num_classes=max(train.num_classes, 2))
        identity = key.identity if key else None
    os.makedirs(out, exist_ok=True)
    if identity:
        # Public identity of the disguise (no key material), read by `tfdisguise export`.
        identity.save(out)
    model.save(os.path.join(out, "model.keras"))
    io.write_text(os.path.join(out, "history.json"), result.to_json())
    save_figure(history_figure(result.history, result.summary()), os.path.join(out, "history.png"))
    return result
