"""Jigsaw (level 1): the block permutation recovered from disguised data and public images, without the key.

In the spirit of the jigsaw-puzzle solvers that attack block scrambling
(Chuman, Kurihara and Kiya), but with statistics the per-block transform cannot
change: the singular values of the cross-covariance between two block positions
are the same before and after any orthogonal M_j, and the noise (independent
across positions) does not touch them; for `projection` RMT, the same on
whitened data are the canonical correlations, which no invertible M_j changes.
Together with each position's own invariants (spectrum, mean norms), the
positions are matched to public plain positions (`_matching`).

Scoring: `positions_correct` is the share of positions placed where the key put
them (when the true permutation is given); `success`, as for every attack, is
the examiner's accuracy on what the attack recovers over its accuracy on the
originals. What jigsaw recovers is the disguised image with its blocks put back
in place (noise mean removed), so `success` is high only when the permutation
was the disguise's main protection (no RMT); under RMT the blocks stay
scrambled inside and `spectral` is the attack that reads them.

Not applicable (see `_keyfree`) when the spec does not permute.

Example (permutation and orthogonal vector RMT; the public data's cross-position
structure places every block):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> rng = np.random.default_rng(0)
>>> base, mix = rng.uniform(60, 200, 64), rng.normal(size=(64, 64))
>>> public = (base + rng.normal(size=(4000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> victim = (base + rng.normal(size=(1000, 64)) @ mix).reshape(-1, 8, 8, 1)
>>> key = Key(bytes(32), Spec.create((8, 8, 1), 2, rmt_mode="vector", noise=20))
>>> perm = solve_jigsaw(public, disguise(victim, key), key.spec)
>>> float(np.mean(perm == key.materials[1]))
1.0
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.attacks._blocks import np_blocks, np_images
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
from tfdisguise.privacy.attacks.spectral_whitened import whiten
from tfdisguise.spec import Permute, Spec

__all__ = ["JigsawResult", "jigsaw", "solve_jigsaw"]


@dataclasses.dataclass(kw_only=True)
class JigsawResult(KeyFreeResult):
    """The jigsaw attack's result (see `KeyFreeResult`); the headline adds the share of positions placed."""

    def headline(self) -> dict[str, float | None]:
        placed = self.positions_correct if self.applicable else None
        return dict(super().headline(), **{f"{self.name} positions correct": placed})


def _model(spec: Spec) -> LinearModel:
    """The spec's linear model, or, for steps it does not model, the plainest one: each block a vector,
    all noise after (the statistics are then only as invariant as the unknown steps allow)."""
    try:
        return LinearModel.of(spec)
    except NotApplicable:
        return LinearModel(spec=spec, kind=None, view="vector", permutes=True, noise_before=0.0,
                           noise_after=spec.noise_level)


def solve_jigsaw(public_plain, victim_disguised, spec: Spec, *, restarts: int = 8, seed: int = 0) -> np.ndarray:
    """perm[j] = the plain position that disguised position j came from, by permutation-proof statistics.

    Projection RMT is matched on whitened moments (canonical correlations),
    everything else on raw ones (orthogonal invariants).
    """
    model = _model(spec)
    public, victim = model.samples(public_plain), model.samples(victim_disguised)
    plain, disguised = effective(model, Moments.of(public), Moments.of(victim))
    if model.kind == "projection":
        plain, disguised, *_ = whiten(plain, disguised, model, len(victim))
    return match_positions(plain, disguised, restarts=restarts, seed=seed)


@register_attack("jigsaw", level=1)
def jigsaw(inp: AttackInput, *, max_public: int | None = 10000, max_images: int | None = None, restarts: int = 8,
           n_samples: int = 6) -> JigsawResult:
    """Jigsaw: recovers the block permutation from permutation-proof statistics (cross-position singular values,
    canonical correlations) of disguised and public images; `positions correct` is the share placed right, success
    the examiner's accuracy on the re-assembled (still transformed) images over its accuracy on the originals.

    Uses the first `max_public` public images, scores the first `max_images`
    victims (None: all), and tries `restarts` random starts.
    """
    if not inp.spec.has(Permute):
        return not_applicable(JigsawResult, "the spec does not permute block positions", inp.setting)
    inp.require("jigsaw", "public_plain", "victim_plain", "examiner")
    victims = np.asarray(inp.victim_disguised)
    public = np.asarray(inp.public_plain)[:max_public]
    perm = solve_jigsaw(public, victims, inp.spec, restarts=restarts, seed=inp.seed)
    scored = victims[:max_images].astype(np.float64) - inp.spec.noise_level / 2.0
    blocks = np_blocks(scored, inp.spec)
    placed = np.empty_like(blocks)
    placed[perm] = blocks
    recon = np.clip(np_images(placed, inp.spec), 0.0, 255.0)
    result = JigsawResult(setting=inp.setting, positions_correct=positions_correct(inp, perm),
                          details={"perm": perm.tolist(), "public_images": len(public)},
                          **score_reconstruction(inp, recon, len(scored)))
    result.samples = {"original": np.asarray(inp.victim_plain)[:n_samples], "disguised": victims[:n_samples],
                      "re-assembled": recon[:n_samples]}
    return result
