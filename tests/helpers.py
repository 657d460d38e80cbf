"""Helpers shared by the tests (fixtures live in conftest.py)."""

import numpy as np

from tfdisguise import Key, Spec


def make_key(seed: int = 0, **spec_kwargs) -> Key:
    """A key with a fixed secret, so that numerical tolerances never depend on luck."""
    secret = np.random.default_rng(seed).bytes(32)
    return Key(secret, Spec.create(**spec_kwargs))
