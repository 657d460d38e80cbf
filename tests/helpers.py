"""Helpers shared by the tests (fixtures live in conftest.py)."""

import numpy as np

from tfdisguise import Key, Spec


def make_key(seed: int = 0, **spec_kwargs) -> Key:
    """A key with a fixed secret, so that numerical tolerances never depend on luck."""
    secret = np.random.default_rng(seed).bytes(32)
    return Key(secret, Spec.create(**spec_kwargs))


def two_classes(n=400, seed=0, shape=(8, 8, 1)):
    """Bright left half or bright right half (uint8 images, labels 0/1): a small CNN learns it in one epoch."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, size=(n, *shape)).astype(np.int64)
    x[y == 0, :, : shape[1] // 2] += 150
    x[y == 1, :, shape[1] // 2 :] += 150
    return x.astype(np.uint8), y
