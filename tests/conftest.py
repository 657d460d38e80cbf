import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cifar_like(rng):
    return rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)


@pytest.fixture
def mnist_like(rng):
    return rng.integers(0, 256, size=(6, 14, 14, 1), dtype=np.uint8)
