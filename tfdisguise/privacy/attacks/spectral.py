"""Spectral alignment (level 1): orthogonal RMT undone from ciphertext and public images alone.

An orthogonal transform with i.i.d. noise keeps the second-order structure of
the plain data: the disguised covariance at each position is M_j^T C M_j plus
the known noise variance, with the plain eigenvalues and eigenvectors rotated
by M_j, and the cross-position covariances are K_j^T C_ii' K_j'. An attacker
with public images of the same kind, and no key and no pair:
1. matches disguised positions to plain ones by statistics M_j cannot change
   (spectra, mean Gram matrices, singular values of cross-position covariances),
   which undoes the permutation (`_matching`);
2. estimates each M_j: Procrustes on the per-row means (`matrix` mode) or the
   eigenvectors with their signs fixed (`vector` mode), refined by alternating
   Procrustes on every mean, within- and cross-position covariance (`_alignment`);
3. inverts: the LMMSE estimate of the whole image with the public data as the
   prior (`_inverse`), or the plain inverse.
Noise before the transform, y = (x + n) M, and after it, y = x M + n, are both
modelled (its mean N/2 and variance N^2/12 are public).

Example (orthogonal matrix RMT and permutation, no noise, synthetic data whose
rows and positions have distinct statistics: the attack recovers the images):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> rng = np.random.default_rng(0)
>>> base, mix = rng.uniform(60, 200, 64), rng.normal(size=(64, 64))
>>> public = (base + rng.normal(size=(4000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> victim = (base + rng.normal(size=(1000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> key = Key.generate(Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode="matrix"))
>>> est = estimate_spectral(public, disguise(victim, key), key.spec)
>>> bool(np.array_equal(est.perm, key.materials[1]))
True
>>> bool(np.abs(est.reconstruct(disguise(victim[:5], key)) - victim[:5]).max() < 5)
True
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tfdisguise.privacy.attacks._alignment import Alignment, eigen_init, global_init, mean_init, random_starts
from tfdisguise.privacy.attacks._inverse import LinearEstimate
from tfdisguise.privacy.attacks._keyfree import (
    KeyFreeResult,
    not_applicable,
    positions_correct,
    score_reconstruction,
)
from tfdisguise.privacy.attacks._linear import LinearModel, NotApplicable
from tfdisguise.privacy.attacks._matching import match_positions
from tfdisguise.privacy.attacks._moments import Moments, effective
from tfdisguise.privacy.attacks.base import AttackInput, register_attack
from tfdisguise.spec import Spec

__all__ = ["SpectralResult", "best_alignment", "estimate_spectral", "run_linear_attack", "spectral"]


@dataclasses.dataclass(kw_only=True)
class SpectralResult(KeyFreeResult):
    """A spectral-alignment attack's result (see `KeyFreeResult`); `details` holds timings and choices."""


def best_alignment(plain: Moments, disguised: Moments, perm, starts: dict, *, random: int = 0,
                   seed: int = 0) -> tuple[np.ndarray, str]:
    """Refines every start in `starts` ({name: [t, n, n]}) and `random` Haar-random ones; keeps the one
    that fits the moments best, and its name."""
    alignment = Alignment(plain, disguised, perm)
    t, n = plain.t, plain.n
    starts = dict(starts)
    for k, start in enumerate(random_starts(np.random.default_rng(seed), random, t, n)):
        starts[f"random {k}"] = start
    best, best_name, best_value = None, "", -np.inf
    for name, start in starts.items():
        mats, value = alignment.refine(start)
        if value > best_value:
            best, best_name, best_value = mats, name, value
    return best, best_name


def estimate_spectral(public_plain, victim_disguised, spec: Spec, *, restarts: int = 8, random_inits: int = 4,
                      seed: int = 0) -> LinearEstimate:
    """The permutation and every orthogonal M_j, from public plain and victim disguised images.

    `restarts` random starts of the position matching and `random_inits` random
    starts of the alignment join the informed ones; the best fit wins. Raises
    `NotApplicable` when the spec is not orthogonal RMT / permutation / uniform noise.
    """
    model = LinearModel.of(spec, kinds=("orthogonal",))
    started = time.time()
    public, victim = model.samples(public_plain), model.samples(victim_disguised)
    prior = Moments.of(public)
    plain, disguised = effective(model, prior, Moments.of(victim))
    perm = match_positions(plain, disguised, restarts=restarts, seed=seed) if model.permutes \
        else np.arange(plain.t)
    details = {"view": model.view}
    if model.kind is None:
        mats = np.broadcast_to(np.eye(model.n), (plain.t, model.n, model.n)).copy()
    else:
        starts = {"eigenvectors": eigen_init(plain, disguised, perm, public, victim)}
        if model.view == "matrix":
            starts["means"] = mean_init(plain, disguised, perm)
        else:
            starts["global eigenvectors"] = global_init(plain, disguised, perm)
        mats, details["start"] = best_alignment(plain, disguised, perm, starts, random=random_inits, seed=seed)
    details["seconds"] = time.time() - started
    return LinearEstimate(model=model, perm=perm, mats=mats, prior=prior, details=details)


def run_linear_attack(inp: AttackInput, name: str, estimator, result_cls, *, kinds: tuple[str, ...], inverse: str,
                      max_public: int | None, max_images: int | None, n_samples: int, **options) -> KeyFreeResult:
    """Runs `estimator(public, disguised, spec, seed=, **options)`, reconstructs and scores the victims.

    A spec that is not RMT of `kinds` / permutation / uniform noise gives a
    not-applicable result (see `_keyfree`).
    """
    if inverse not in ("lmmse", "direct"):
        raise ValueError(f"`inverse` must be 'lmmse' or 'direct'. Received: inverse={inverse!r}")
    try:
        LinearModel.of(inp.spec, kinds=kinds)
    except NotApplicable as e:
        return not_applicable(result_cls, str(e), inp.setting)
    inp.require(name, "public_plain", "victim_plain", "examiner")
    public = np.asarray(inp.public_plain)[:max_public]
    victims = np.asarray(inp.victim_disguised)
    est = estimator(public, victims, inp.spec, seed=inp.seed, **options)
    scored = victims[:max_images]
    recon = est.reconstruct(scored, inverse=inverse)
    result = result_cls(setting=inp.setting, positions_correct=positions_correct(inp, est.perm) if
                        est.model.permutes else None, details=dict(est.details, inverse=inverse,
                                                                   public_images=len(public)),
                        **score_reconstruction(inp, recon, len(scored)))
    result.samples = {"original": np.asarray(inp.victim_plain)[:n_samples], "disguised": victims[:n_samples],
                      "reconstructed": recon[:n_samples]}
    return result


@register_attack("spectral", level=1)
def spectral(inp: AttackInput, *, inverse: str = "lmmse", max_public: int | None = 10000,
             max_images: int | None = None, restarts: int = 8, random_inits: int = 4,
             n_samples: int = 6) -> SpectralResult:
    """Spectral alignment: matches positions by permutation-proof statistics, estimates each orthogonal block
    transform from public-vs-disguised means and covariances, and inverts it; success is the examiner's accuracy
    on the reconstructions over its accuracy on the originals (not applicable beyond orthogonal RMT, permutation
    and uniform noise).

    Uses the first `max_public` public images, reconstructs the first `max_images`
    victims (None: all) with `inverse` ("lmmse" or "direct"), and tries
    `restarts` random starts when matching positions and `random_inits` when
    aligning (see `estimate_spectral`).
    """
    return run_linear_attack(inp, "spectral", estimate_spectral, SpectralResult, kinds=("orthogonal",), inverse=inverse,
                             max_public=max_public, max_images=max_images, n_samples=n_samples, restarts=restarts,
                             random_inits=random_inits)
