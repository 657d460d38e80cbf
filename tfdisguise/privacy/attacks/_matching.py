"""Matching disguised block positions to plain ones by statistics an orthogonal M_j cannot change.

Per position (the unary term): the eigenvalues of its covariance, the Gram matrix
of its per-row means, the traces of its per-row-pair covariances, and the mean's
quadratic forms with the row covariance. Per pair of positions (the pairwise
term): the singular values of their cross-covariance, K_j^T C_ii' K_j', which
orthogonal K_j, K_j' leave alone and which the noise does not touch (it is
independent across positions). On whitened moments the same singular values are
the canonical correlations between positions, which any invertible M_j leaves alone.

Matching is a quadratic assignment problem; it is solved by iterated linear
assignment (each position's cost given where the others are) plus pairwise swaps,
from the unary solution and a few random starts, keeping the cheapest.

Example (the cross-position structure alone places shuffled positions):

>>> import numpy as np
>>> from tfdisguise.privacy.attacks._moments import Moments
>>> rng = np.random.default_rng(0)
>>> mix = rng.normal(size=(12, 12))
>>> x = rng.normal(size=(4000, 12)) @ mix  # 6 positions of 2 correlated values
>>> perm = rng.permutation(6)
>>> y = x.reshape(-1, 6, 2)[:, perm] @ np.array([[0.0, 1.0], [1.0, 0.0]])  # permute, then an orthogonal map
>>> plain, disguised = Moments.of(x.reshape(-1, 6, 1, 2)), Moments.of(y.reshape(-1, 6, 1, 2))
>>> bool(np.array_equal(match_positions(plain, disguised), perm))
True
"""

from __future__ import annotations

import numpy as np

from tfdisguise.privacy.attacks._blocks import assign
from tfdisguise.privacy.attacks._moments import Moments

__all__ = ["cross_singular_values", "match_positions", "position_invariants"]


def _signed_root(a: np.ndarray) -> np.ndarray:
    """Second-order quantities back on the scale of pixel values, sign kept."""
    return np.sign(a) * np.sqrt(np.abs(a))


def position_invariants(mo: Moments) -> np.ndarray:
    """[t, F] features of each position that an orthogonal M_j leaves unchanged."""
    t, m, n = mo.t, mo.m, mo.n
    within = mo.blocks()[np.arange(t), np.arange(t)]  # [t, d, d]
    eig = np.sqrt(np.maximum(np.linalg.eigvalsh(within)[:, ::-1], 0.0))
    gram = np.einsum("tra,tsa->trs", mo.mean, mo.mean).reshape(t, -1)
    traces = np.einsum("trasa->trs", within.reshape(t, m, n, m, n)).reshape(t, -1)
    pooled = mo.pooled()
    quad1 = np.einsum("tra,tab,tsb->trs", mo.mean, pooled, mo.mean).reshape(t, -1) / mo.scale
    quad2 = np.einsum("tra,tab,tbc,tsc->trs", mo.mean, pooled, pooled, mo.mean).reshape(t, -1) / mo.scale ** 2
    return np.concatenate([eig] + [_signed_root(f) for f in (gram, traces, quad1, quad2)], axis=1)


def cross_singular_values(mo: Moments) -> np.ndarray:
    """[t, t, d]: square roots of the singular values of each cross-covariance (pixel scale)."""
    return np.sqrt(np.linalg.svd(mo.blocks(), compute_uv=False))


def _pair_cost(pair_plain, pair_disguised, perm) -> np.ndarray:
    """cost[i, j]: the pairwise cost of putting plain i at output j, the others staying where perm puts them.

    Squared distances, so that the sum over neighbours is one matrix product.
    """
    t = len(perm)
    placed = pair_plain[:, perm]  # [i, j', f]
    a2 = np.einsum("ikf,ikf->i", placed, placed)
    b2 = np.einsum("jkf,jkf->j", pair_disguised, pair_disguised)
    cost = a2[:, None] + b2[None, :] - 2.0 * placed.reshape(t, -1) @ pair_disguised.reshape(t, -1).T
    # a position is not its own neighbour: take the j' = j term back out
    own = placed[:, np.arange(t)] - pair_disguised[np.arange(t), np.arange(t)][None]  # [i, j, f]
    return np.maximum(cost - np.einsum("ijf,ijf->ij", own, own), 0.0)


def _total(unary, pair_plain, pair_disguised, perm) -> float:
    t = len(perm)
    diff = pair_plain[perm][:, perm] - pair_disguised
    diff = np.einsum("jkf,jkf->jk", diff, diff)
    np.fill_diagonal(diff, 0.0)
    return float(unary[perm, np.arange(t)].sum() + diff.sum())


def _iterate(unary, pair_plain, pair_disguised, perm, iters: int) -> np.ndarray:
    for _ in range(iters):
        new = assign(unary + 2.0 * _pair_cost(pair_plain, pair_disguised, perm))
        if np.array_equal(new, perm):
            break
        perm = new
    return perm


def _swaps(unary, pair_plain, pair_disguised, perm, max_sweeps: int = 10) -> tuple[np.ndarray, float]:
    best = _total(unary, pair_plain, pair_disguised, perm)
    t = len(perm)
    for _ in range(max_sweeps):
        improved = False
        for a in range(t):
            for b in range(a + 1, t):
                trial = perm.copy()
                trial[a], trial[b] = trial[b], trial[a]
                cost = _total(unary, pair_plain, pair_disguised, trial)
                if cost < best - 1e-9 * abs(best):
                    perm, best, improved = trial, cost, True
        if not improved:
            break
    return perm, best


def match_positions(plain: Moments, disguised: Moments, *, restarts: int = 8, seed: int = 0,
                    iters: int = 30, swap_limit: int = 64, polish: int = 3) -> np.ndarray:
    """perm[j] = the plain position that disguised position j came from.

    The iterated assignment runs from the unary solution and `restarts` random
    permutations; pairwise swaps then polish the `polish` cheapest results, when
    there are at most `swap_limit` positions (a sweep costs O(t^4)).
    """
    # L1 on the unary features: a few of them (the smallest noise-corrected eigenvalues) are biased by
    # sampling noise, and a squared distance would let those outweigh everything else
    unary = np.abs(position_invariants(plain)[:, None] - position_invariants(disguised)[None]).sum(-1)
    pair_plain, pair_disguised = cross_singular_values(plain), cross_singular_values(disguised)
    t = plain.t
    rng = np.random.default_rng(seed)
    starts = [assign(unary)] + [rng.permutation(t) for _ in range(restarts)]
    results = []  # (cost, perm); sorts are by cost only, and stable
    for start in starts:
        perm = _iterate(unary, pair_plain, pair_disguised, start, iters)
        results.append((_total(unary, pair_plain, pair_disguised, perm), perm))
    results.sort(key=lambda r: r[0])
    if t <= swap_limit:
        results = [_swaps(unary, pair_plain, pair_disguised, perm)[::-1] for _, perm in results[:polish]]
        results.sort(key=lambda r: r[0])
    return results[0][1]
