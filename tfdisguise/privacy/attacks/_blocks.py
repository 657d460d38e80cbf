"""Numpy views of the library's block layout, and the assignment solver, shared by the attacks."""

from __future__ import annotations

import numpy as np

from tfdisguise.mechanisms.layout import np_from_blocks, np_to_blocks
from tfdisguise.spec import Spec


def np_blocks(images, spec: Spec) -> np.ndarray:
    """[N, H, W, C] -> [t, N, d] float64, the library's block layout."""
    return np.ascontiguousarray(np_to_blocks(np.asarray(images, np.float64), spec))


def np_images(blocks, spec: Spec) -> np.ndarray:
    """[t, N, d] -> [N, H, W, C] float64."""
    return np.ascontiguousarray(np_from_blocks(np.asarray(blocks, np.float64), spec))


def assign(cost: np.ndarray) -> np.ndarray:
    """perm[j] = the source i assigned to output j, minimizing total cost[i, j]."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(cost.shape[1], dtype=np.int64)
    perm[cols] = rows
    return perm
