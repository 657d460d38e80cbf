"""Block-norm thumbnail (level 1): orthogonal R_i preserve each block's norm, which leaks
a low-resolution image that a classifier trained on public images can read.

Example (no noise, no permutation: the thumbnail is the plain image's block norms):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> key = Key.generate(Spec.create((4, 4, 1), block_size=2, rmt_mode="vector", permute=False))
>>> x = np.full((1, 4, 4, 1), 10, dtype="uint8")
>>> np.round(block_norm_thumbnails(disguise(x, key), key.spec), 3)
array([[[20., 20.],
        [20., 20.]]])
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfdisguise.privacy.attacks._blocks import assign, np_blocks
from tfdisguise.privacy.attacks.base import (
    AttackInput,
    AttackResult,
    examiner_reference,
    register_attack,
    relative_success,
)
from tfdisguise.privacy.metrics import accuracy
from tfdisguise.spec import Permute, Spec

__all__ = ["BlockNormResult", "block_norm", "block_norm_attack", "block_norm_thumbnails"]


def block_norm_thumbnails(disguised, spec: Spec) -> np.ndarray:
    """[N, gh, gw] block norms of disguised images, in output block order.

    Orthogonal RMT preserves each block's norm, so without noise these equal the
    plain image's block norms (permuted, if the spec permutes). For noise after
    the transform, the expected noise energy d*N^2/3 is taken off.
    """
    blocks = np_blocks(disguised, spec)
    energy = np.einsum("tnd,tnd->nt", blocks, blocks)
    noise = spec.noise_level
    if noise:
        energy = np.maximum(energy - spec.block_dim * noise**2 / 3.0, 0.0)
    return np.sqrt(energy).reshape(-1, *spec.grid)


@dataclasses.dataclass(kw_only=True)
class BlockNormResult(AttackResult):
    """Level-1 attack: classify victims from the block-norm thumbnail that RMT leaks.

    `success` is `examiner_accuracy` (the thumbnail classifier's accuracy on the
    victim's disguised images) over the examiner's accuracy on the originals.
    """

    name: str = "block_norm"
    level: int = 1
    examiner_accuracy: float
    plain_thumbnail_accuracy: float
    chance: float
    permutation_recovered: float | None = None

    def headline(self) -> dict[str, float]:
        return {"block-norm examiner accuracy": self.examiner_accuracy}

    def summary(self) -> str:
        return (f"block-norm thumbnail [{self.setting}]: examiner accuracy {self.examiner_accuracy:.4f} "
                f"(on plain thumbnails {self.plain_thumbnail_accuracy:.4f}, chance {self.chance:.2f}); "
                f"success {self.success:.2f}")

    def pictures(self) -> list[tuple[str, np.ndarray]]:
        return [("block norms", np.asarray(self.samples["thumbnail"])[..., np.newaxis])]

    def figure(self):
        from tfdisguise.plots import image_grid

        rows = [("original", self.samples["original"])] + self.pictures()
        return image_grid([r for _, r in rows], [t for t, _ in rows], f"block-norm thumbnail [{self.setting}]")


def _thumbnail_classifier(shape, num_classes):
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])


def block_norm_attack(
    public_x, public_y, victim_disguised, victim_y, victim_plain, spec: Spec, *,
    num_classes: int, true_perm=None, epochs: int = 15, setting: str = "", seed: int = 0,
    reference_accuracy: float | None = None,
) -> BlockNormResult:
    """Trains a classifier on block-norm thumbnails of public plain images and applies it
    to the thumbnails of the victim's disguised images.

    A level-1 attacker has no pairs; it undoes the permutation by matching the
    mean and spread of each block position's norm between public and victim data.
    `reference_accuracy` is the examiner's accuracy on the originals, which
    `success` divides by (None: success is the attack's accuracy itself).
    """
    keras.utils.set_random_seed(seed)
    pub = block_norm_thumbnails(public_x, spec.plain())
    vic = block_norm_thumbnails(victim_disguised, spec)
    perm_recovered = None
    if spec.has(Permute):
        p_flat, v_flat = pub.reshape(len(pub), -1), vic.reshape(len(vic), -1)
        stats_p = np.stack([p_flat.mean(0), p_flat.std(0)], axis=1)
        stats_v = np.stack([v_flat.mean(0), v_flat.std(0)], axis=1)
        cost = np.abs(stats_p[:, np.newaxis, :] - stats_v[np.newaxis, :, :]).sum(axis=2)
        perm = assign(cost)  # output position j came from public position perm[j]
        unperm = np.empty_like(v_flat)
        unperm[:, perm] = v_flat
        vic = unperm.reshape(vic.shape)
        if true_perm is not None:
            perm_recovered = float(np.mean(perm == np.asarray(true_perm)))
    scale = pub.max() or 1.0
    model = _thumbnail_classifier(pub.shape[1:], num_classes)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pub / scale, public_y, epochs=epochs, batch_size=128, verbose=0)
    plain_thumbs = block_norm_thumbnails(victim_plain, spec.plain())
    acc = accuracy(model, vic / scale, victim_y)
    result = BlockNormResult(
        setting=setting,
        success=relative_success(acc, reference_accuracy),
        examiner_accuracy=acc,
        plain_thumbnail_accuracy=accuracy(model, plain_thumbs / scale, victim_y),
        chance=1.0 / num_classes,
        permutation_recovered=perm_recovered,
    )
    result.samples = {"original": np.asarray(victim_plain[:6]), "thumbnail": vic[:6]}
    return result


@register_attack("block_norm", level=1)
def block_norm(inp: AttackInput, *, epochs: int = 15) -> BlockNormResult:
    """Block-norm thumbnails: orthogonal RMT preserves each block's norm, so a classifier trained on the public
    images' block norms reads the victim's.

    `epochs` trains that classifier; the seed is `inp.seed`.
    """
    inp.require("block_norm", "public_plain", "public_labels", "victim_plain", "examiner")
    return block_norm_attack(inp.public_plain, inp.public_labels, inp.victim_disguised, inp.victim_labels,
                             inp.victim_plain, inp.spec, num_classes=inp.num_classes, true_perm=inp.true_perm,
                             epochs=epochs, setting=inp.setting, seed=inp.seed,
                             reference_accuracy=examiner_reference(inp))
