"""Scramble search (level 1): block scrambling undone by trying every transform it can draw, without the key.

Block scrambling (`block_scramble`) draws each block's transform from a small public family: 4 rotations
(2 for non-square blocks) x 2 flips x 2 negative-positive x C! channel orders, 16 for grey images and 96 for
colour. Every member is an orthogonal signed permutation of the block plus a bias, so:

1. each member of the family, applied to each plain block position's mean and covariance from the public
   images (noise included, before or after the scramble), predicts a disguised position's mean and
   covariance; the cost of a (plain position, disguised position) pair is its best member's error;
2. when the spec permutes, the positions are matched by assignment on that cost; each then takes its best
   member (the per-position, ELE-like variant), or one member serves every position (the shared variant:
   the member whose best matching costs least);
3. the victim's blocks are put back in place and through the inverse of their member.

Success, as for every attack: the examiner's accuracy on the reconstructions over its accuracy on the
originals. Not applicable to specs with steps other than block_scramble, permute and noise.

Example (per-position scrambling of 8x8 grey images with a block structure the public images share):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> rng = np.random.default_rng(0)
>>> base, mix = rng.uniform(40, 200, 64), rng.normal(size=(64, 64)) * 4
>>> public = np.clip(base + rng.normal(size=(3000, 64)) @ mix, 0, 255).reshape(-1, 8, 8, 1)
>>> victim = np.clip(base + rng.normal(size=(500, 64)) @ mix, 0, 255).reshape(-1, 8, 8, 1)
>>> key = Key(bytes(32), Spec.create((8, 8, 1), 4, rmt=None, scramble="per_position", noise=10))
>>> recon, perm, members = search(public, disguise(victim, key), key.spec)
>>> bool(np.array_equal(perm, key.materials[1]))
True
>>> bool(np.abs(recon - victim).mean() < 4)
True
"""

from __future__ import annotations

import itertools

import numpy as np

from tfdisguise.mechanisms.scramble import BlockScramble
from tfdisguise.privacy.attacks._blocks import assign, np_blocks, np_images
from tfdisguise.privacy.attacks._keyfree import (
    KeyFreeResult,
    not_applicable,
    positions_correct,
    score_reconstruction,
)
from tfdisguise.privacy.attacks.base import AttackInput, register_attack
from tfdisguise.spec import Permute, Spec

__all__ = ["denoise", "fit", "inverse_affine", "scramble_family", "scramble_search", "search", "undo"]


def scramble_family(step: BlockScramble, spec: Spec) -> tuple[np.ndarray, np.ndarray, list]:
    """(matrices [K, d, d], biases [K, d], choices): every transform `step` can draw for one block."""
    (bh, bw), c = spec.block_size, spec.image_shape[2]
    turns = (range(4) if bh == bw else (0, 2)) if step.rotate else (0,)
    flips = (0, 1) if step.flip else (0,)
    negates = (0, 1) if step.negpos else (0,)
    orders = list(itertools.permutations(range(c))) if step.shuffle_channels else [tuple(range(c))]
    choices = [(t, f, n, *o) for t, f, n, o in itertools.product(turns, flips, negates, orders)]
    linear = step.build(np.array(choices, np.int32), spec)
    bias = linear.bias if linear.bias is not None else np.zeros((len(choices), spec.block_dim))
    return np.asarray(linear.matrices, np.float64), np.asarray(bias, np.float64), choices


def _moments(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean [t, d] and covariance [t, d, d] of [t, N, d] blocks."""
    mean = blocks.mean(axis=1)
    centred = blocks - mean[:, None]
    return mean, np.einsum("tni,tnj->tij", centred, centred) / max(1, blocks.shape[1] - 1)


def search(public_plain, victim_disguised, spec: Spec):
    """(reconstructed victims [N, H, W, C], perm, member index per position) for a scrambling spec.

    perm[j] is the plain position that disguised position j came from (the identity when the spec does not
    permute); members[j] the family member (see `scramble_family`) taken for it.
    """
    perm, members = fit(public_plain, victim_disguised, spec)
    return np.clip(undo(victim_disguised, spec, perm, members), 0.0, 255.0), perm, members


def _noise_shifts(spec: Spec) -> tuple[float, float]:
    """Uniform noise U[0, N] has mean N/2 per value: (its mean before the scramble, its mean after)."""
    noise = spec.noise_level
    before = bool(noise) and spec.steps[0].adds_noise  # Spec.create puts noise first only when it comes before
    return (noise / 2.0, 0.0) if before else (0.0, noise / 2.0)


def fit(public_plain, disguised, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """(perm, members): the search's estimate from public plain images and disguised ones (see `search`)."""
    step = spec.steps_of(BlockScramble)[0]
    matrices, biases, _ = scramble_family(step, spec)
    noise = spec.noise_level
    t, d = spec.num_blocks, spec.block_dim
    plain_mean, plain_cov = _moments(np_blocks(public_plain, spec))
    seen_mean, seen_cov = _moments(np_blocks(disguised, spec))
    # The noise's variance N^2/12 per value adds to every covariance, before or after the scramble alike.
    shift_in, shift_out = _noise_shifts(spec)
    # What member k makes of plain position s: [t, K, d] means and [t, K, d, d] covariances.
    predicted_mean = np.einsum("si,kij->skj", plain_mean + shift_in, matrices) + biases[None] + shift_out
    predicted_cov = np.einsum("kai,sab,kbj->skij", matrices, plain_cov, matrices, optimize=True)
    predicted_cov += noise ** 2 / 12.0 * np.eye(d)
    # cost[s, j, k]: how badly member k applied to plain position s predicts disguised position j's mean and
    # covariance, each relative to its scale.
    cost = np.empty((t, t, len(matrices)))
    for j in range(t):
        mean_err = np.linalg.norm(predicted_mean - seen_mean[j], axis=-1) / (np.linalg.norm(seen_mean[j]) + d)
        cov_err = np.linalg.norm(predicted_cov - seen_cov[j], axis=(-2, -1)) / (np.linalg.norm(seen_cov[j]) + d)
        cost[:, j] = mean_err + cov_err
    permutes = spec.has(Permute)
    if step.per_position:
        best = cost.argmin(axis=2)  # each (s, j) pair's best member
        perm = assign(cost.min(axis=2)) if permutes else np.arange(t)
        members = best[perm, np.arange(t)]
    else:  # one member for every position: the one whose best placement costs least
        options = []
        for k in range(len(matrices)):
            p = assign(cost[:, :, k]) if permutes else np.arange(t)
            options.append((cost[p, np.arange(t), k].sum(), k, p))
        _, k, perm = min(options, key=lambda o: o[0])
        members = np.full(t, k)
    return perm, members


def undo(disguised, spec: Spec, perm, members) -> np.ndarray:
    """The disguised images put back through the inverse of their members and in place, unclipped (float64)."""
    matrices, biases, _ = scramble_family(spec.steps_of(BlockScramble)[0], spec)
    shift_in, shift_out = _noise_shifts(spec)
    # y = (x + n_in) M + b + n_out, so x = (y - b - n_out) M^T - n_in (M orthogonal).
    blocks = np_blocks(disguised, spec)
    undone = np.einsum("tni,tji->tnj", blocks - biases[members][:, None] - shift_out, matrices[members]) - shift_in
    placed = np.empty_like(undone)
    placed[perm] = undone
    return np_images(placed, spec)


def denoise(images, spec: Spec, public_plain) -> np.ndarray:
    """Per block position, the LMMSE estimate of the plain block from `undo`'s output, which is the plain block
    plus zero-mean noise of variance N^2/12 per value (uniform noise, through an orthogonal member):
    mean + (x - mean) (C + s^2 I)^-1 C, with the mean and covariance C of the public images' blocks."""
    variance = spec.noise_level ** 2 / 12.0
    if not variance:  # nothing to remove (and constant blocks, such as MNIST's borders, would make C singular)
        return np.asarray(images, np.float64)
    mean, cov = _moments(np_blocks(public_plain, spec))
    gain = np.linalg.solve(cov + variance * np.eye(spec.block_dim), cov)  # (C + s^2 I)^-1 C, per position
    blocks = np_blocks(images, spec)
    return np_images(mean[:, None] + np.einsum("tni,tij->tnj", blocks - mean[:, None], gain), spec)


def inverse_affine(spec: Spec, perm, members, public_plain=None) -> tuple[np.ndarray, np.ndarray]:
    """(G [D, D], c [D]) with `undo(y) == y.reshape(N, D) @ G + c`: the search's inverse as one affine map, for a
    fixed first layer (D = H*W*C pixels). Built by probing `undo` with the zero image and the D unit images.
    With `public_plain` and noise in the spec, the map also removes the noise it can (`denoise`), as the
    spectral attack's LMMSE reconstruction does for RMT.

    >>> from tfdisguise.key import Key
    >>> from tfdisguise.mechanisms import disguise
    >>> key = Key(bytes(32), Spec.create((4, 4, 1), 2, rmt=None, scramble="per_position", noise=10))
    >>> perm, members = key.materials[1], np.arange(4) % 3
    >>> g, c = inverse_affine(key.spec, perm, members)
    >>> y = disguise(np.full((2, 4, 4, 1), 7.0), key)
    >>> bool(np.allclose(y.reshape(2, -1) @ g + c, undo(y, key.spec, perm, members).reshape(2, -1)))
    True
    """
    size = int(np.prod(spec.image_shape))
    probes = np.concatenate([np.zeros((1, size)), np.eye(size)]).reshape(-1, *spec.image_shape)
    out = undo(probes, spec, perm, members)
    if public_plain is not None and spec.noise_level:
        out = denoise(out, spec, public_plain)
    out = out.reshape(size + 1, size)
    return out[1:] - out[0], out[0]


def _applicable(spec: Spec) -> str:
    names = {s.name for s in spec.steps}
    if "block_scramble" not in names:
        return "the spec has no block_scramble step"
    others = names - {"block_scramble", "permute", "noise"}
    if others:
        return f"the search models block_scramble, permute and noise only; the spec also has {sorted(others)}"
    return ""


@register_attack("scramble_search", level=1)
def scramble_search(inp: AttackInput, *, max_public: int | None = 10000, max_images: int | None = None,
                    n_samples: int = 6) -> KeyFreeResult:
    """Scramble search: places the blocks by jigsaw, then tries every transform block scrambling can draw (16 for
    grey, 96 for colour) at each position against the public images' block statistics, and inverts the best;
    success is the examiner's accuracy on the reconstructions over its accuracy on the originals.
    """
    reason = _applicable(inp.spec)
    if reason:
        return not_applicable(KeyFreeResult, reason, inp.setting)
    inp.require("scramble_search", "public_plain", "victim_plain", "examiner")
    victims = np.asarray(inp.victim_disguised)
    public = np.asarray(inp.public_plain)[:max_public]
    recon, perm, members = search(public, victims, inp.spec)
    recon = recon[:max_images]
    result = KeyFreeResult(setting=inp.setting, positions_correct=positions_correct(inp, perm),
                           details={"perm": perm.tolist(), "members": members.tolist(), "public_images": len(public)},
                           **score_reconstruction(inp, recon, len(recon)))
    result.samples = {"original": np.asarray(inp.victim_plain)[:n_samples], "disguised": victims[:n_samples],
                      "reconstructed": recon[:n_samples]}
    return result
