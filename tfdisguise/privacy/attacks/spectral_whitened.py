"""Whitened spectral alignment (level 1): the spectral attack extended to `projection` (non-orthogonal) RMT.

A Gaussian M_j changes the spectrum, so plain and disguised statistics no longer
match directly. Whitening each position on both sides (its row covariance
C^-1/2, regularized above the sampling noise that the public noise level
implies) leaves one orthogonal factor O_j per position:

    z_y = z_x O_j,    M_j = W_x O_j W_y^-1.

O_j is then fixed by every statistic that shares it, with the spectral attack's
machinery: the whitened per-row means and per-row-pair covariances (`matrix`
mode, where the bh*C rows of a block share M_j), and the whitened
cross-position covariances, whose singular values are the canonical
correlations between positions; those, which no invertible M_j can change,
also match the positions when the spec permutes. An LMMSE inverse with the
public data as the prior reconstructs the images.

Example (projection matrix RMT and permutation, no noise; synthetic data whose
rows and positions have distinct statistics):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> rng = np.random.default_rng(0)
>>> base, mix = rng.uniform(60, 200, 64), rng.normal(size=(64, 64))
>>> public = (base + rng.normal(size=(4000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> victim = (base + rng.normal(size=(1000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> key = Key(bytes(32), Spec.create((8, 8, 1), 4, rmt="projection", rmt_mode="matrix"))
>>> est = estimate_whitened(public, disguise(victim, key), key.spec)
>>> bool(np.array_equal(est.perm, key.materials[1]))
True
>>> bool(np.abs(est.reconstruct(disguise(victim[:5], key)) - np.clip(victim[:5], 0, 255)).max() < 5)
True
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tfdisguise.privacy.attacks._alignment import global_init, mean_init
from tfdisguise.privacy.attacks._inverse import LinearEstimate
from tfdisguise.privacy.attacks._keyfree import KeyFreeResult
from tfdisguise.privacy.attacks._linear import LinearModel
from tfdisguise.privacy.attacks._matching import match_positions
from tfdisguise.privacy.attacks._moments import Moments, effective, inverse_sqrt
from tfdisguise.privacy.attacks.base import AttackInput, register_attack
from tfdisguise.privacy.attacks.spectral import best_alignment, run_linear_attack
from tfdisguise.spec import Spec

__all__ = ["SpectralWhitenedResult", "estimate_whitened", "spectral_whitened", "whiten", "whitening_floor"]


@dataclasses.dataclass(kw_only=True)
class SpectralWhitenedResult(KeyFreeResult):
    """A whitened spectral attack's result (see `KeyFreeResult`); `details` holds the regularization used."""


def whitening_floor(model: LinearModel, victims: int) -> float:
    """The eigenvalue error that sampling the noise leaves in a disguised row covariance.

    A sample covariance of r = n / samples noise rows of variance s^2 has
    eigenvalues spread over s^2 (1 +- sqrt(r))^2 (Marchenko-Pastur); once s^2 is
    taken off, directions weaker than s^2 (2 sqrt(r) + r) cannot be told from
    noise, so whitening must not blow them up.
    """
    r = model.n / max(victims * model.m, 1)
    return (model.var_before + model.var_after) * (2.0 * np.sqrt(r) + r)


def whiten(plain: Moments, disguised: Moments, model: LinearModel, victims: int, eps: float = 1e-6):
    """(z_x, z_y, W_x, W_y^-1, regularization): both sides' moments with every position's row covariance
    whitened, regularized by the larger of `eps` times the mean public variance and `whitening_floor`.

    Without noise the regularization only guards against exactly singular
    covariances (MNIST's empty border): a Gaussian M_j is often badly
    conditioned, and its weak directions still carry the image.
    """
    pooled_x, pooled_y = plain.pooled(), disguised.pooled()
    reg = max(eps * float(np.mean(np.trace(pooled_x, axis1=1, axis2=2))) / model.n,
              whitening_floor(model, victims), 1e-9)
    wx, _ = (np.stack(a) for a in zip(*(inverse_sqrt(c, reg) for c in pooled_x)))
    wy, wy_inv = (np.stack(a) for a in zip(*(inverse_sqrt(c, reg) for c in pooled_y)))
    return plain.transformed(wx), disguised.transformed(wy), wx, wy_inv, reg


def estimate_whitened(public_plain, victim_disguised, spec: Spec, *, restarts: int = 8, random_inits: int = 4,
                      seed: int = 0, eps: float = 1e-6) -> LinearEstimate:
    """The permutation and every M_j (orthogonal or not), from public plain and victim disguised images.

    `eps` regularizes the whitening (see `whiten`). `restarts` and
    `random_inits` as for `estimate_spectral`. Raises `NotApplicable`
    when the spec is not RMT / permutation / uniform noise.
    """
    model = LinearModel.of(spec)
    started = time.time()
    public, victim = model.samples(public_plain), model.samples(victim_disguised)
    prior = Moments.of(public)
    plain, disguised = effective(model, prior, Moments.of(victim))
    t, n = plain.t, model.n
    zx, zy, wx, wy_inv, reg = whiten(plain, disguised, model, len(victim), eps)
    perm = match_positions(zx, zy, restarts=restarts, seed=seed) if model.permutes else np.arange(t)
    details = {"view": model.view, "regularization": float(reg)}
    if model.kind is None:
        mats = np.broadcast_to(np.eye(n), (t, n, n)).copy()
    else:
        starts = {"means": mean_init(zx, zy, perm), "global eigenvectors": global_init(zx, zy, perm)}
        rotations, details["start"] = best_alignment(zx, zy, perm, starts, random=random_inits, seed=seed)
        mats = np.einsum("jab,jbc,jcd->jad", wx[perm], rotations, wy_inv)
    details["seconds"] = time.time() - started
    return LinearEstimate(model=model, perm=perm, mats=mats, prior=prior, details=details)


@register_attack("spectral_whitened", level=1)
def spectral_whitened(inp: AttackInput, *, inverse: str = "lmmse", max_public: int | None = 10000,
                      max_images: int | None = None, restarts: int = 8, random_inits: int = 4,
                      n_samples: int = 6) -> SpectralWhitenedResult:
    """Whitened spectral alignment: the spectral attack after whitening both sides, so it also undoes projection
    (non-orthogonal) RMT; success is the examiner's accuracy on the LMMSE reconstructions over its accuracy on the
    originals (not applicable beyond RMT, permutation and uniform noise).

    Options as for `spectral`.
    """
    return run_linear_attack(inp, "spectral_whitened", estimate_whitened, SpectralWhitenedResult,
                             kinds=("orthogonal", "projection"), inverse=inverse, max_public=max_public,
                             max_images=max_images, n_samples=n_samples, restarts=restarts, random_inits=random_inits)
