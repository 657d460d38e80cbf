"""Key-agnostic examiner (level 1): a classifier trained on public images disguised under
many random keys of the victim's public spec, applied to the victim's disguised images.

Accuracy near chance means the key matters; accuracy near the examiner's on plain
images means the spec alone gives the images away.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.attacks.base import (
    AttackInput,
    AttackResult,
    examiner_reference,
    register_attack,
    relative_success,
)
from tfdisguise.privacy.metrics import accuracy
from tfdisguise.spec import Spec

__all__ = ["KeyAgnosticResult", "key_agnostic", "key_agnostic_attack"]


@dataclasses.dataclass(kw_only=True)
class KeyAgnosticResult(AttackResult):
    """Level-1 attack: a classifier trained under many random keys of the same spec.

    `success` is `accuracy` over the examiner's accuracy on the originals.
    """

    name: str = "key_agnostic"
    level: int = 1
    accuracy: float
    num_keys: int
    train_images: int
    epochs: int
    chance: float

    def headline(self) -> dict[str, float]:
        return {"key-agnostic examiner accuracy": self.accuracy}

    def summary(self) -> str:
        return (f"key-agnostic examiner [{self.setting}]: accuracy {self.accuracy:.4f} on the victim's disguised "
                f"images ({self.num_keys} random keys, {self.train_images} images, {self.epochs} epochs; "
                f"chance {self.chance:.2f}); success {self.success:.2f}")


def key_agnostic_attack(
    public_x, public_y, victim_disguised, victim_y, spec: Spec, *, num_classes: int,
    num_keys: int = 16, config=None, setting: str = "", progress: bool = False,
    reference_accuracy: float | None = None,
) -> KeyAgnosticResult:
    """The attacker disguises its own public images under `num_keys` fresh random keys
    of the victim's public spec, trains a classifier, then classifies the victim's
    disguised images. Accuracy near chance means the key matters.

    `reference_accuracy` is the examiner's accuracy on the originals, which
    `success` divides by (None: success is the attack's accuracy itself).
    """
    import tensorflow as tf

    from tfdisguise.key import Key
    from tfdisguise.mechanisms import disguise
    from tfdisguise.train import TrainConfig, fit

    if num_keys < 1 or num_keys > len(public_x):
        raise ValueError(f"`num_keys` must be between 1 and the {len(public_x)} public images. "
                         f"Received: num_keys={num_keys}")
    config = config or TrainConfig()
    chunks = np.array_split(np.arange(len(public_x)), num_keys)
    xs = np.concatenate([disguise(public_x[idx], Key.generate(spec)) for idx in chunks])
    ys = np.concatenate([public_y[idx] for idx in chunks])
    train = tf.data.Dataset.from_tensor_slices((xs, ys)).shuffle(len(xs), seed=config.seed).batch(config.batch_size)
    model, _ = fit(train.prefetch(tf.data.AUTOTUNE), None, input_shape=spec.image_shape, num_classes=num_classes,
                   adapt_data=xs[:4096], config=config, steps_per_epoch=-(-len(xs) // config.batch_size),
                   progress=progress, spec=spec)  # the public spec: block models take their geometry from it
    acc = accuracy(model, victim_disguised, victim_y)
    return KeyAgnosticResult(setting=setting, success=relative_success(acc, reference_accuracy), accuracy=acc,
                             num_keys=num_keys, train_images=len(xs), epochs=config.epochs, chance=1.0 / num_classes)


@register_attack("key_agnostic", level=1)
def key_agnostic(inp: AttackInput, *, num_keys: int = 16, max_images: int | None = None,
                 progress: bool = False) -> KeyAgnosticResult:
    """Key-agnostic examiner: a model trained on public images disguised under many random keys of the public
    spec classifies the victim's disguised images.

    It uses the first `max_images` public images (None: all), split over `num_keys` fresh keys,
    and trains with `inp.train_config` (default: `TrainConfig(seed=inp.seed)`).
    """
    from tfdisguise.train import TrainConfig

    inp.require("key_agnostic", "public_plain", "public_labels", "victim_plain", "examiner")
    n = max_images
    return key_agnostic_attack(np.asarray(inp.public_plain)[:n], np.asarray(inp.public_labels)[:n],
                               inp.victim_disguised, inp.victim_labels, inp.spec, num_classes=inp.num_classes,
                               num_keys=num_keys, config=inp.train_config or TrainConfig(seed=inp.seed),
                               setting=inp.setting, progress=progress, reference_accuracy=examiner_reference(inp))
