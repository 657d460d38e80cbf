"""Tiny synthetic data for the key-free attack tests: cases the attacks must break and cases they must not."""

import dataclasses
from typing import ClassVar

import keras
import numpy as np

from tfdisguise import Key, Spec
from tfdisguise.mechanisms import Op, apply, uniform_source
from tfdisguise.privacy.attacks import AttackInput
from tfdisguise.spec import Step, register_step


def structured(rng, n, shape=(8, 8, 1), mix_seed=7):
    """Two classes (bright left or bright right half) on top of a fixed, well-separated spectrum.

    x = base + (z * scales) Q^T with z ~ N(0, I), a fixed random rotation Q and
    scales falling geometrically from 80 to 2: every block position and every
    pair of positions has its own, distinct second-order statistics. Q and base
    come from `mix_seed`, so public and victim draws share them.
    """
    size = int(np.prod(shape))
    fixed = np.random.default_rng(mix_seed)
    q, _ = np.linalg.qr(fixed.normal(size=(size, size)))
    scales = 80.0 * (2.0 / 80.0) ** (np.arange(size) / (size - 1))
    base = fixed.uniform(70, 130, size)
    y = np.arange(n) % 2
    x = (base + (rng.normal(size=(n, size)) * scales) @ q.T).reshape(n, *shape)
    half = shape[1] // 2
    x[y == 0, :, :half] += 50.0
    x[y == 1, :, half:] += 50.0
    return np.clip(x, 0, 255), y


def separated(rng, n, shape=(8, 8, 1), block=4, mix_seed=3):
    """Two classes as in `structured`, with independent block positions of a known, well-separated spectrum.

    Block i is base_i + (z * scales_i) V_i^T with a fixed random rotation V_i and
    scales_i = (40 + 20 i) * 0.6^k: each eigenvalue is 0.36 times the one before,
    so an orthogonal block transform is fixed by the within-position statistics
    alone, and every position has its own spectrum.
    """
    h, w, c = shape
    d, t = block * block * c, (h // block) * (w // block)
    fixed = np.random.default_rng(mix_seed)
    rot = np.linalg.qr(fixed.normal(size=(t, d, d)))[0]
    scales = (40.0 + 20.0 * np.arange(t))[:, None] * 0.6 ** np.arange(d)
    base = fixed.uniform(70, 130, (t, d))
    blocks = base + np.einsum("ntk,tdk->ntd", rng.normal(size=(n, t, d)) * scales, rot)
    x = blocks.reshape(n, h // block, w // block, block, block, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    y = np.arange(n) % 2
    half = w // 2
    x[y == 0, :, :half] += 50.0
    x[y == 1, :, half:] += 50.0
    return np.clip(x, 0, 255), y


def sphere(rng, n, shape=(4, 4, 1)):
    """Isotropic data: 128 + 60 u with u uniform on the unit sphere; the class is the sign of u at pixel 0.

    Every orthogonal transform leaves the distribution unchanged, so no key-free
    attack can tell where pixel 0 went: it must stay at chance.
    """
    u = rng.normal(size=(n, int(np.prod(shape))))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return (128.0 + 60.0 * u).reshape(n, *shape), (u[:, 0] > 0).astype(np.int64)


def half_examiner(shape=(8, 8, 1)):
    """Reads `structured`'s classes: class 1 when the right half is brighter than the left."""
    h, w, c = shape
    sign = np.ones((h, w, c))
    sign[:, : w // 2] = -1.0
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    weights = np.stack([-sign.reshape(-1), sign.reshape(-1)], axis=1) / 10.0
    model.layers[-1].set_weights([weights, np.zeros(2)])
    return model


def pixel0_examiner(shape=(4, 4, 1)):
    """Reads `sphere`'s classes: class 1 when pixel 0 is above 128."""
    size = int(np.prod(shape))
    weights = np.zeros((size, 2))
    weights[0] = [-1.0, 1.0]
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    model.layers[-1].set_weights([weights, np.array([128.0, -128.0])])
    return model


def fixed_key(spec: Spec, key_seed: int = 0) -> Key:
    """A key with a fixed secret, so that tolerances never depend on luck."""
    return Key(np.random.default_rng(key_seed).bytes(32), spec)


def disguise_seeded(images, key: Key, noise_seed: int = 0):
    """`disguise` with reproducible noise, so that the tests do not depend on luck."""
    return keras.ops.convert_to_numpy(apply(images, key.plan, uniform_source(keras.random.SeedGenerator(noise_seed))))


def attack_input(spec: Spec, public, victim, examiner, seed: int = 0, key_seed: int = 0,
                 noise_seed: int = 0) -> AttackInput:
    """The victims disguised under `fixed_key(spec, key_seed)`, with the true permutation for scoring."""
    key = fixed_key(spec, key_seed)
    names = [s.name for s in spec.steps]
    true_perm = key.materials[names.index("permute")] if "permute" in names else None
    (xp, yp), (xv, yv) = public, victim
    return AttackInput(spec=spec, victim_disguised=disguise_seeded(xv, key, noise_seed), victim_labels=yv,
                       victim_plain=xv, num_classes=2, public_plain=xp, public_labels=yp, examiner=examiner,
                       true_perm=true_perm, seed=seed)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SubstituteOp(Op):
    """Replaces every pixel value v by table[v]: deterministic, not linear, numpy only."""

    table: np.ndarray  # [256] uint8, a permutation of 0..255

    layout: ClassVar[str] = "blocks"
    backend: ClassVar[str] = "numpy"

    def __call__(self, blocks, uniform=None, dtype="float32"):
        return self.table[np.clip(np.rint(blocks), 0, 255).astype(np.uint8)].astype(dtype)

    def inverse(self):
        return SubstituteOp(np.argsort(self.table).astype(np.uint8))


@register_step
@dataclasses.dataclass(frozen=True)
class ToySubstitution(Step):
    """A keyed byte substitution: a toy stand-in for a deterministic block cipher such as AES-ECB
    (equal plain blocks give equal disguised blocks), so the tests do not depend on a real cipher."""

    name: ClassVar[str] = "toy_substitution"
    linear: ClassVar[bool] = False

    def material(self, rng, spec):
        return rng.permutation(256).astype(np.uint8)

    def build(self, table, spec):
        return SubstituteOp(table)
