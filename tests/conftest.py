import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tfdisguise import Key, Spec


def make_key(seed: int = 0, **spec_kwargs) -> Key:
    """A key with a fixed secret, so that numerical tolerances never depend on luck."""
    secret = np.random.default_rng(seed).bytes(32)
    return Key(secret, Spec.create(**spec_kwargs))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cifar_like(rng):
    return rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)


@pytest.fixture
def mnist_like(rng):
    return rng.integers(0, 256, size=(6, 14, 14, 1), dtype=np.uint8)
