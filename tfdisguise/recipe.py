"""The training recipe, without TensorFlow: what to train and how, for every Keras backend.

`TrainConfig` names the model, budget and tricks; `augmentation` builds the
owner-side augmentation it names; `compile_model` gives a model the recipe's
optimizer, schedule and loss. `tfdisguise.train` runs the recipe on the
TensorFlow backend through tf.data; a JAX script (benchmarks/model_gap_jax.py)
runs the same recipe with the disguise inside the model.

>>> config = TrainConfig(model="resnet20", epochs=100, augment="crop=0.125,flip", label_smoothing=0.1)
>>> [type(layer).__name__ for layer in augmentation(config.augment).layers]
['RandomTranslation', 'RandomFlip']
"""

from __future__ import annotations

import dataclasses

import keras

__all__ = ["TrainConfig", "AUGMENTATIONS", "STRATEGIES", "augmentation", "compile_model"]

# No "multi_worker": Keras 3.15's `fit` under MultiWorkerMirroredStrategy fails on TF 2.21 (two workers on
# loopback: "Attempt to convert a value (PerReplica ...) to a Tensor", keras-team/keras#20585); see the README.
STRATEGIES = ("none", "mirrored")


@dataclasses.dataclass
class TrainConfig:
    """The training recipe. Defaults suit `simple_cnn` on MNIST-size data.

    The options after `seed` are off by default; each applies to plain and
    disguised training alike, so a comparison stays at an equal recipe:
    `model_options` (passed to the model family, e.g. `{"dim": 64}` for
    block_vit), `label_smoothing`, `augment` (an owner-side augmentation
    recipe applied to the plain images before any disguise, see
    `augmentation`), `weight_decay` (AdamW instead of Adam) and
    `warmup_epochs` (a linear learning-rate warm-up before the cosine decay).
    """

    model: str = "simple_cnn"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    model_options: dict = dataclasses.field(default_factory=dict)
    label_smoothing: float = 0.0
    augment: str | None = None
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    strategy: str = "none"  # see `distribution_strategy`

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"`epochs` must be >= 1. Received: epochs={self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={self.weight_decay}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"`warmup_epochs` must be in [0, epochs). Received: warmup_epochs={self.warmup_epochs}")
        if self.augment:
            augmentation(self.augment)  # fail at construction on a bad recipe
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}")


# Owner-side augmentation recipe terms -> a Keras layer made from the term's value.
AUGMENTATIONS = {
    "translate": lambda v: keras.layers.RandomTranslation(v, v, fill_mode="constant"),
    "rotate": lambda v: keras.layers.RandomRotation(v, fill_mode="constant"),
    "zoom": lambda v: keras.layers.RandomZoom(v, fill_mode="constant"),
    "flip": lambda v: keras.layers.RandomFlip("horizontal"),
    "crop": lambda v: keras.layers.RandomTranslation(v, v, fill_mode="reflect"),
}


def augmentation(recipe: str) -> keras.Sequential:
    """An owner-side augmentation from a recipe such as "translate=0.1,rotate=0.05" (a Keras Sequential).

    Terms: `translate=F` (shift up to F of the size, zero fill), `rotate=F`
    (up to F of a full turn), `zoom=F`, `flip` (left-right), `crop=F` (shift
    with reflected fill, the usual CIFAR augmentation). It is applied to the
    plain images, before any disguise (`wrap(..., augment=)`).

    >>> [type(layer).__name__ for layer in augmentation("translate=0.1,flip").layers]
    ['RandomTranslation', 'RandomFlip']
    """
    layers = []
    for term in (t.strip() for t in str(recipe).split(",") if t.strip()):
        name, _, value = term.partition("=")
        if name not in AUGMENTATIONS:
            raise ValueError(f"`augment` terms must be among {sorted(AUGMENTATIONS)}. Received: augment={recipe!r}")
        try:
            amount = float(value) if value else 0.0
        except ValueError:
            raise ValueError(f"`augment` term {term!r} needs a number, as in 'translate=0.1'. "
                             f"Received: augment={recipe!r}") from None
        if name != "flip" and not 0 < amount < 1:
            raise ValueError(f"`augment` term {term!r} needs a fraction in (0, 1). Received: augment={recipe!r}")
        layers.append(AUGMENTATIONS[name](amount))
    if not layers:
        raise ValueError(f"`augment` must name at least one term. Received: augment={recipe!r}")
    if keras.backend.backend() == "jax":
        # Keras marks its geometric augmentations `supports_jit = False` on every backend because TensorFlow's
        # projective-transform op has no XLA kernel. On JAX the transform is jittable `map_coordinates`, and the
        # flag would otherwise turn the whole model eager (ResNet-20 on an H200: 1.2 s per step, 13 ms compiled).
        for layer in layers:
            layer.supports_jit = True
    return keras.Sequential(layers, name="owner_augmentation")


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(round(steps_per_epoch * config.warmup_epochs))
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warmup),
                                                          warmup_target=config.learning_rate, warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    if config.weight_decay:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    # Label smoothing needs one-hot targets (`fit` converts them).
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
            if config.label_smoothing else "sparse_categorical_crossentropy")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
