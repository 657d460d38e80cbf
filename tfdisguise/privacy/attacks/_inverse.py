"""Reconstructing plain images once the attacker has estimated the permutation and every M_j.

The estimates make one D x D matrix A (y = x A on flattened samples, plain
positions in, disguised positions out). Two inverses:
- `direct`: undo the noise mean and invert A (exact without noise);
- `lmmse`: the linear minimum-mean-square-error estimate of the whole image,
  using the public images' mean and covariance as the prior and the public
  noise level: x = mean + (y - E[y]) (A^T (C + s_b^2 I) A + s_a^2 I)^-1 A^T C.
  It removes noise, uses neighbouring blocks, and stays sane where a transform
  is badly estimated (directions the public data never varies in come back as
  the public mean, not amplified noise).

Example (a known permutation of two 1 x 1 positions, no noise: both are exact):

>>> import numpy as np
>>> a = block_map(np.ones((2, 1, 1)), np.array([1, 0]), m=1)
>>> a.tolist()
[[0.0, 1.0], [1.0, 0.0]]
>>> x = np.array([[3.0, 5.0], [1.0, 7.0]])
>>> direct(x @ a, a, 0.0, 0.0).tolist()
[[3.0, 5.0], [1.0, 7.0]]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.attacks._linear import LinearModel
from tfdisguise.privacy.attacks._moments import Moments

__all__ = ["LinearEstimate", "block_map", "direct", "lmmse"]


def block_map(mats: np.ndarray, perm, m: int) -> np.ndarray:
    """[D, D]: block (perm[j], j) is I_m (x) M_j; y = x @ A on flattened [t, m, n] samples."""
    t, n = mats.shape[:2]
    d = m * n
    out = np.zeros((t * d, t * d))
    for j, i in enumerate(perm):
        out[i * d:(i + 1) * d, j * d:(j + 1) * d] = np.kron(np.eye(m), mats[j])
    return out


def direct(disguised_flat, a, noise_before: float, noise_after: float) -> np.ndarray:
    """[N, D]: (y - N_a/2) A^-1 - N_b/2 (a pseudo-inverse where A is singular)."""
    return (np.asarray(disguised_flat) - noise_after / 2.0) @ np.linalg.pinv(a) - noise_before / 2.0


def lmmse(disguised_flat, a, plain: Moments, var_before: float, var_after: float,
          noise_before: float, noise_after: float, ridge: float = 1e-6, chunk: int = 4096) -> np.ndarray:
    """[N, D]: the LMMSE estimate of the plain images (see the module docstring).

    `plain` holds the public images' raw moments (no noise added).
    """
    size = len(a)
    mean = plain.mean.reshape(-1)
    prior = plain.cov + var_before * np.eye(size)
    mean_y = (mean + noise_before / 2.0) @ a + noise_after / 2.0
    cov_y = a.T @ prior @ a + var_after * np.eye(size)
    cov_y += ridge * max(np.trace(cov_y) / size, 1e-12) * np.eye(size)  # noise-free specs: C may be singular
    gain = np.linalg.solve(cov_y, a.T @ plain.cov)
    y = np.asarray(disguised_flat)
    return np.concatenate([mean + (y[s:s + chunk] - mean_y) @ gain for s in range(0, len(y), chunk)])


@dataclasses.dataclass
class LinearEstimate:
    """A key-free attacker's estimate of a linear disguise, and the reconstruction it allows.

    model: the spec's `LinearModel`; perm[j]: the plain position of disguised
    position j; mats[j]: the estimated M_j; prior: the public images' raw moments.
    """

    model: LinearModel
    perm: np.ndarray
    mats: np.ndarray
    prior: Moments
    details: dict = dataclasses.field(default_factory=dict)

    def matrix(self) -> np.ndarray:
        """The estimated D x D map A (y = x A on flattened samples)."""
        return block_map(self.mats, self.perm, self.model.m)

    def reconstruct(self, disguised, inverse: str = "lmmse") -> np.ndarray:
        """[N, H, W, C] plain estimates, clipped to 0..255; `inverse` is "lmmse" or "direct"."""
        return np.clip(self._unclipped(disguised, inverse), 0.0, 255.0)

    # Probing builds a D x D map from D unit images; past this D (128x74x3 or so) it is gigabytes and minutes.
    MAX_AFFINE_SIZE = 16384

    def affine(self, inverse: str = "lmmse") -> tuple[np.ndarray, np.ndarray]:
        """(G [D, D], c [D]) with x_hat = y G + c on flattened [N, D] images: `reconstruct` before its clip.

        Both inverses are affine in y, so a model can hold one as a fixed first layer (a Dense with kernel G and
        bias c); benchmarks/inverse_stem.py and model_gap_jax.py do. G is found by probing with the unit images,
        so D (pixels x channels) may be at most `MAX_AFFINE_SIZE`.
        """
        shape = tuple(self.model.spec.image_shape)
        size = int(np.prod(shape))
        if size > self.MAX_AFFINE_SIZE:
            raise ValueError(f"An affine map of {shape} images would be {size} x {size}; at most "
                             f"{self.MAX_AFFINE_SIZE} pixels x channels are supported. Use `reconstruct` instead.")
        c = self._unclipped(np.zeros((1, *shape)), inverse).reshape(-1)
        g = self._unclipped(np.eye(size).reshape(size, *shape), inverse).reshape(size, size) - c
        return g.astype(np.float32), c.astype(np.float32)

    def _unclipped(self, disguised, inverse: str) -> np.ndarray:
        if inverse not in ("lmmse", "direct"):
            raise ValueError(f"`inverse` must be 'lmmse' or 'direct'. Received: inverse={inverse!r}")
        model = self.model
        y = model.samples(disguised).reshape(len(disguised), -1)
        a = self.matrix()
        if inverse == "direct":
            flat = direct(y, a, model.noise_before, model.noise_after)
        else:
            flat = lmmse(y, a, self.prior, model.var_before, model.var_after, model.noise_before, model.noise_after)
        return model.images(flat)
