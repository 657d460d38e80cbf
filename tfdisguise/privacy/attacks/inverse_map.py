"""The key-free attacks' inverse as one affine map `y @ G + c`: what a cloud that breaks the disguise at level 1
can put in front of a classifier as a fixed first layer (benchmarks/inverse_stem.py, benchmarks/model_gap_jax.py).

RMT: the `spectral` attack's LMMSE reconstruction. Block scrambling: `scramble_search`'s transforms, put back in
place and inverted, then (`denoise`) the noise removed by the public images' block statistics, as the LMMSE map
does for RMT. Both are affine in the disguised image, so one Dense layer holds them. The map is a D x D matrix
(D = H*W*C), which `LinearEstimate.affine` caps at 16,384 for the spectral attack.

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.mechanisms import disguise
>>> from tfdisguise.spec import Spec
>>> rng = np.random.default_rng(0)
>>> base, mix = rng.uniform(40, 200, 64), rng.normal(size=(64, 64)) * 4
>>> public = np.clip(base + rng.normal(size=(3000, 64)) @ mix, 0, 255).reshape(-1, 8, 8, 1)
>>> owner = np.clip(base + rng.normal(size=(1000, 64)) @ mix, 0, 255).reshape(-1, 8, 8, 1)
>>> key = Key(bytes(32), Spec.create((8, 8, 1), 4, rmt=None, scramble="per_position", noise=10))
>>> uploaded = disguise(owner, key)
>>> g, c, perm = key_free_inverse(public, uploaded, key.spec)
>>> g.shape, bool(np.array_equal(perm, key.materials[1]))
((64, 64), True)
>>> bool(np.mean((uploaded.reshape(1000, -1) @ g + c - owner.reshape(1000, -1)) ** 2) < 10 ** 2 / 12)
True
"""

from __future__ import annotations

import numpy as np

from tfdisguise.privacy.attacks.scramble_search import _applicable as _scramble_reason
from tfdisguise.privacy.attacks.scramble_search import fit, inverse_affine
from tfdisguise.privacy.attacks.spectral import estimate_spectral
from tfdisguise.spec import Spec

__all__ = ["invertible", "key_free_inverse"]


def invertible(spec: Spec) -> bool:
    """Whether `key_free_inverse` takes the spec: an RMT, or block scrambling (with permutation and noise only)."""
    return spec.has("rmt") or not _scramble_reason(spec)


def key_free_inverse(public_plain, disguised, spec: Spec, seed: int = 0,
                     denoise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G [D, D], c [D], the estimated block order): the attack's reconstruction of `disguised`-like images as
    `y.reshape(N, D) @ G + c`, unclipped, estimated from `public_plain` and the `disguised` images alone.

    `denoise=False` (block scrambling only) inverts the found transforms without removing the noise.
    """
    if not invertible(spec):
        raise ValueError(f"No key-free inverse for {spec.describe()}: it takes RMT specs (the spectral attack) and "
                         "block scrambling with permutation and noise (scramble_search).")
    if spec.has("block_scramble") and not spec.has("rmt"):
        perm, members = fit(public_plain, disguised, spec)
        return (*inverse_affine(spec, perm, members, public_plain if denoise else None), perm)
    if not denoise:
        raise ValueError("`denoise=False` applies to block scrambling; the spectral attack's LMMSE map always "
                         f"removes the noise it can. Received a spec {spec.describe()}")
    estimate = estimate_spectral(public_plain, disguised, spec, seed=seed)
    return (*estimate.affine(), estimate.perm)
