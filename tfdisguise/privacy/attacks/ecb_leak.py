"""ECB leak (level 1): a deterministic disguise maps equal plain blocks to equal disguised blocks.

Block-wise AES in ECB mode (the authors' mechanism against level-2 attackers)
and every other noise-free block mechanism share this: wherever two images hold
the same plain block at a position, they hold the same disguised block there.
Data sets with a uniform background (MNIST's black border and gaps) therefore
show, in every disguised image, which blocks are background: the most common
disguised block at a position is, with overwhelming likelihood, the image of
the most common plain block there. That binary map is a low-resolution
silhouette of the image.

The attacker computes the map for the victim's disguised images and for its
public plain images, undoes the permutation by matching positions on the
map's statistics (background rate per position, co-occurrence across
positions; `_matching`), trains a small classifier on the public maps and
applies it to the victim's. Success: its accuracy over the examiner's accuracy
on the originals (it only classifies).

Not applicable (see `_keyfree`) to a spec that adds fresh noise: equal plain
blocks then give different disguised ones.

Example (the map of two images, one with a background block at position 0):

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((2, 4, 1), 2, rmt=None, permute=False)
>>> x = np.array([[[0, 0, 5, 6], [0, 0, 7, 8]], [[0, 0, 1, 2], [0, 0, 3, 4]],
...               [[9, 9, 0, 0], [9, 9, 0, 0]]])[..., None]
>>> background_map(x, spec).astype(int).tolist()
[[1, 0], [1, 0], [0, 1]]
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfdisguise.privacy.attacks._blocks import np_blocks
from tfdisguise.privacy.attacks._keyfree import KeyFreeResult, not_applicable, positions_correct
from tfdisguise.privacy.attacks._matching import match_positions
from tfdisguise.privacy.attacks._moments import Moments
from tfdisguise.privacy.attacks.base import AttackInput, examiner_reference, register_attack, relative_success
from tfdisguise.privacy.metrics import accuracy
from tfdisguise.spec import Permute, Spec

__all__ = ["EcbLeakResult", "background_map", "ecb_leak"]


@dataclasses.dataclass(kw_only=True)
class EcbLeakResult(KeyFreeResult):
    """The ECB-leak attack's result (see `KeyFreeResult`; `attacked_accuracy` is its classifier's accuracy).

    background_share: the share of the victim's disguised blocks equal to their
        position's most common one (how much the disguise leaks).
    plain_map_accuracy: the classifier's accuracy on the maps of the victim's
        plain images (what the attack would reach with the permutation known).
    chance: 1 / num_classes.
    """

    background_share: float | None = None
    plain_map_accuracy: float | None = None
    chance: float | None = None

    def pictures(self) -> list[tuple[str, np.ndarray]]:
        return [("background map", np.asarray(self.samples["map"]))] if "map" in self.samples else []


def background_map(images, spec: Spec, decimals: int = 3) -> np.ndarray:
    """[N, t] bool: whether each block equals the most common block at its position (values rounded to
    `decimals`, so that float copies of one computation compare equal)."""
    blocks = np.round(np_blocks(images, spec), decimals)  # [t, N, d]
    out = np.zeros(blocks.shape[:2][::-1], dtype=bool)
    for j, position in enumerate(blocks):
        _, inverse, counts = np.unique(position, axis=0, return_inverse=True, return_counts=True)
        out[:, j] = inverse.reshape(-1) == counts.argmax()
    return out


def _classifier(features: int, num_classes: int):
    return keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])


@register_attack("ecb_leak", level=1)
def ecb_leak(inp: AttackInput, *, epochs: int = 15, max_public: int | None = None,
             n_samples: int = 6) -> EcbLeakResult:
    """ECB leak: a deterministic (noise-free) disguise maps equal blocks to equal blocks, so the map of
    background blocks in each disguised image, positions matched on public data, is classified by a model trained
    on public maps; success is its accuracy over the examiner's (not applicable when the spec adds noise).

    Trains for `epochs` on the first `max_public` public images (None: all); the seed is `inp.seed`.
    """
    spec = inp.spec
    if not spec.is_noise_free:
        return not_applicable(EcbLeakResult, "the spec adds fresh noise, so equal plain blocks do not give equal "
                              "disguised blocks", inp.setting)
    inp.require("ecb_leak", "public_plain", "public_labels", "victim_plain", "examiner")
    keras.utils.set_random_seed(inp.seed)
    public = np.asarray(inp.public_plain)[:max_public]
    public_y = np.asarray(inp.public_labels).reshape(-1)[:max_public]
    plain_maps = background_map(public, spec.plain())
    victim_maps = background_map(inp.victim_disguised, spec)
    perm = None
    if spec.has(Permute):
        perm = match_positions(Moments.of(plain_maps[:, :, None, None].astype(float)),
                               Moments.of(victim_maps[:, :, None, None].astype(float)), seed=inp.seed)
        placed = np.empty_like(victim_maps)
        placed[:, perm] = victim_maps
        victim_maps = placed
    model = _classifier(plain_maps.shape[1], inp.num_classes)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(plain_maps.astype("float32"), public_y, epochs=epochs, batch_size=128, verbose=0)
    labels = np.asarray(inp.victim_labels).reshape(-1)
    attacked = accuracy(model, victim_maps.astype("float32"), labels)
    reference = examiner_reference(inp)
    own_maps = background_map(inp.victim_plain, spec.plain())
    result = EcbLeakResult(
        setting=inp.setting, success=relative_success(attacked, reference), attacked_accuracy=attacked,
        examiner_accuracy_original=reference, positions_correct=positions_correct(inp, perm) if perm is not None
        else None, background_share=float(victim_maps.mean()),
        plain_map_accuracy=accuracy(model, own_maps.astype("float32"), labels), chance=1.0 / inp.num_classes,
        details={"public_images": len(public)},
    )
    grid = spec.grid
    result.samples = {"original": np.asarray(inp.victim_plain)[:n_samples],
                      "disguised": np.asarray(inp.victim_disguised)[:n_samples],
                      "map": 255.0 * victim_maps[:n_samples].reshape(-1, *grid, 1)}
    return result
