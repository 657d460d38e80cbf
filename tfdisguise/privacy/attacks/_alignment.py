"""Estimating the orthogonal factor M_j of every block position from plain and disguised moments.

Given matched positions (i = perm[j]) and moments in the form of `_moments.effective`,

    mean_y[j] = mean_x[i] M_j,    C^y[j, j'] = K_j^T C^x[i, i'] K_j',    K_j = I_m (x) M_j,

with every M_j orthogonal. Three starting points:
- `mean_init`: orthogonal Procrustes on the m per-row means (`matrix` mode, where
  m rows share M_j; exact without noise when the means span the row space);
- `eigen_init`: the eigenvectors of each position's row covariance, each sign
  fixed by the mean, or by the third moment where the mean is orthogonal to it;
- `global_init`: the eigenvectors of the whole-image covariance, restricted to
  each position (useful when a position's own covariance is isotropic, as after
  whitening in `vector` mode).
`refine` then maximizes the agreement of all first and second moments,

    sum_j <M_j, mean_x[i]^T mean_y[j]> + sum_{j, j'} <C^x[i', i] K_j, K_j' C^y[j', j]> / scale,

by alternating Procrustes: each M_j becomes the orthogonal polar factor of its
gradient, all positions at once, keeping the best iterate.

Example (vector mode, no noise: the eigenbasis start recovers M exactly):

>>> import numpy as np
>>> from tfdisguise.privacy.attacks._moments import Moments
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(5000, 1, 1, 3)) * [3.0, 2.0, 1.0] + [1.0, 1.0, 1.0]
>>> q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
>>> plain, disguised = Moments.of(x), Moments.of(x @ q)
>>> m = refine(plain, disguised, np.array([0]), eigen_init(plain, disguised, np.array([0])))
>>> bool(np.allclose(m[0], q, atol=1e-6))
True
"""

from __future__ import annotations

import numpy as np

from tfdisguise.privacy.attacks._moments import Moments

__all__ = ["Alignment", "eigen_init", "global_init", "mean_init", "objective", "polar", "random_starts", "refine"]


def polar(s: np.ndarray) -> np.ndarray:
    """The orthogonal matrix nearest to s (batched over leading axes): U V^T from its SVD."""
    u, _, vt = np.linalg.svd(s)
    return u @ vt


def random_starts(rng: np.random.Generator, count: int, t: int, n: int) -> list[np.ndarray]:
    """`count` starts of t Haar-random n x n orthogonal matrices each."""
    out = []
    for _ in range(count):
        q, r = np.linalg.qr(rng.normal(size=(t, n, n)))
        out.append(q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :])
    return out


def _third_moments(samples, vectors) -> np.ndarray:
    """E[((row - mean) . v_k)^3] over every row of [N, m, n] samples, for each column v_k."""
    rows = samples.reshape(-1, samples.shape[-1])[:50000]  # plenty for a sign
    proj = (rows - rows.mean(axis=0)) @ vectors
    return np.mean(proj ** 3, axis=0)


def mean_init(plain: Moments, disguised: Moments, perm) -> np.ndarray:
    """[t, n, n]: Procrustes of the per-row means, M_j = argmin ||mean_x[i] M - mean_y[j]||."""
    return polar(np.einsum("jra,jrb->jab", plain.mean[perm], disguised.mean))


def eigen_init(plain: Moments, disguised: Moments, perm, plain_samples=None, disguised_samples=None) -> np.ndarray:
    """[t, n, n]: M_j = U S W^T from the eigenvectors U, W of the row covariances, signs S fixed by the means.

    Where a mean is (nearly) orthogonal to an eigenvector, the sign comes from the
    third moments along it, if the samples ([N, t, m, n]) are given.
    """
    cov_x, cov_y = plain.pooled()[perm], disguised.pooled()
    _, u = np.linalg.eigh(cov_x)
    _, w = np.linalg.eigh(cov_y)
    a = np.einsum("jra,jak->jk", plain.mean[perm], u)
    b = np.einsum("jra,jak->jk", disguised.mean, w)
    signs = np.sign(a * b)
    weak = np.abs(a) < 1e-3 * (np.abs(a).max(axis=1, keepdims=True) + 1e-12)
    if plain_samples is not None and disguised_samples is not None and weak.any():
        for j, i in enumerate(perm):
            if weak[j].any():
                third = _third_moments(plain_samples[:, i], u[j]) * _third_moments(disguised_samples[:, j], w[j])
                signs[j] = np.where(weak[j], np.sign(third), signs[j])
    signs[signs == 0] = 1.0
    return np.einsum("jak,jk,jbk->jab", u, signs, w)


def global_init(plain: Moments, disguised: Moments, perm, k: int | None = None) -> np.ndarray:
    """[t, n, n] from the top-k eigenvectors of the whole-image covariances (signs fixed by the means).

    If C^x = U L U^T then C^y = V L V^T with V = K^T U S, so each position's rows of
    U S V^T estimate K_j; its polar factor on the m diagonal blocks is M_j.
    """
    t, m, n, d = plain.t, plain.m, plain.n, plain.d
    from scipy.linalg import eigh

    size = t * d
    k = min(k or d, size)
    top = [size - k, size - 1]  # only the k largest: the full decomposition of a 3072 x 3072 matrix is slow
    u = eigh(plain.cov, subset_by_index=top)[1][:, ::-1]
    v = eigh(disguised.cov, subset_by_index=top)[1][:, ::-1]
    signs = np.sign((plain.mean.reshape(-1) @ u) * (disguised.mean.reshape(-1) @ v))
    signs[signs == 0] = 1.0
    u = u.reshape(t, d, k)[perm] * signs
    v = v.reshape(t, d, k)
    k_blocks = np.einsum("jak,jbk->jab", u, v).reshape(t, m, n, m, n)
    return polar(np.einsum("jrarb->jab", k_blocks))


class Alignment:
    """The moments of matched positions, prepared for `refine`: each position with its `neighbours`
    strongest cross-covariances (by the public data; all of them on small grids), which carry nearly
    all of the information and keep one iteration O(t * neighbours * d^3) instead of O(t^2 d^3)."""

    def __init__(self, plain: Moments, disguised: Moments, perm, w_cov: float = 1.0, neighbours: int = 16):
        perm = np.asarray(perm)
        t = plain.t
        cx = plain.blocks()[perm][:, perm]  # cx[j', j] = C^x[perm[j'], perm[j]]
        strength = np.linalg.norm(cx, axis=(2, 3))
        strength[np.arange(t), np.arange(t)] = np.inf  # a position is always its own neighbour
        self.nb = np.argsort(-strength, axis=0)[:min(neighbours, t)].T  # [j, q] -> j'
        cols = np.arange(t)[:, None]
        self.cx_t = np.ascontiguousarray(cx[self.nb, cols].transpose(0, 1, 3, 2))  # C^x[i', i]^T, [j, q, d, d]
        self.cy = np.ascontiguousarray(disguised.blocks()[self.nb, cols])  # C^y[j', j], [j, q, d, d]
        self.mean_term = np.einsum("jra,jrb->jab", plain.mean[perm], disguised.mean)
        self.m, self.weight = plain.m, w_cov / plain.scale

    def covariance_term(self, mats: np.ndarray) -> np.ndarray:
        """[t, n, n]: sum over neighbours j' of the m diagonal blocks of C^x[i', i]^T K_j' C^y[j', j]."""
        t, n = mats.shape[:2]
        kron = np.stack([np.kron(np.eye(self.m), a) for a in mats])[self.nb]  # K_j' per [j, q]
        g = np.matmul(self.cx_t, np.matmul(kron, self.cy)).sum(axis=1)
        return self.weight * np.einsum("jrarb->jab", g.reshape(t, self.m, n, self.m, n))

    def value(self, mats: np.ndarray, cov_term: np.ndarray | None = None) -> float:
        """The agreement of `mats` with the moments: <M, mean term> + <M, covariance term> / 2."""
        cov_term = self.covariance_term(mats) if cov_term is None else cov_term
        return float(np.einsum("jab,jab->", mats, self.mean_term + cov_term / 2.0))

    def refine(self, mats: np.ndarray, iters: int = 200, tol: float = 1e-6) -> tuple[np.ndarray, float]:
        """(best iterate, its value) of the alternating Procrustes from `mats` (see `refine`)."""
        best, best_value, first, previous = mats, -np.inf, None, None
        for _ in range(iters):
            cov_term = self.covariance_term(mats)
            value = self.value(mats, cov_term)
            if value > best_value:
                best, best_value = mats, value
            first = value if first is None else first
            if previous is not None and abs(value - previous) <= tol * max(abs(value - first), 1e-12 * abs(value)):
                break
            previous = value
            mats = polar(self.mean_term + cov_term)
        return best, best_value


def objective(plain: Moments, disguised: Moments, perm, mats, w_cov: float = 1.0) -> float:
    """The agreement `refine` maximizes (see the module docstring)."""
    return Alignment(plain, disguised, perm, w_cov).value(mats)


def refine(plain: Moments, disguised: Moments, perm, mats, *, iters: int = 200, w_cov: float = 1.0,
           tol: float = 1e-6) -> np.ndarray:
    """[t, n, n]: alternating Procrustes from `mats`; returns the best iterate found.

    Every M_j moves at once to the polar factor of its gradient (a generalized
    power iteration); it stops when an iteration gains less than `tol` times
    what all iterations so far have gained (the objective carries a large
    constant, so a tolerance relative to its value would stop far too early).
    """
    return Alignment(plain, disguised, perm, w_cov).refine(mats, iters, tol)[0]
