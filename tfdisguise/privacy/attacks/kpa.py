"""Known-plaintext regression (level 2): least-squares estimates of each R_i and of the
permutation from k leaked plain/disguised pairs, then reconstruction of the victim's images.

Example (noise-free, vector RMT: k > d leaked pairs recover every R_i):

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.mechanisms import disguise
>>> key = Key.generate(Spec.create((8, 8, 1), block_size=4, rmt_mode="vector"))
>>> x = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 1), dtype="uint8")
>>> est = fit_block_linear(x, disguise(x, key), key.spec)
>>> bool(np.array_equal(est.perm, key.plan.linear.perm))
True
>>> bool(np.abs(est.reconstruct(disguise(x[:3], key)) - x[:3]).max() < 1e-2)
True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.privacy.attacks._blocks import assign, np_blocks, np_images
from tfdisguise.privacy.attacks.base import AttackInput, AttackResult, register_attack, relative_success
from tfdisguise.privacy.metrics import accuracy, attack_success
from tfdisguise.spec import RMT, Permute, Spec

__all__ = [
    "BlockLinearEstimate",
    "KnownPlaintextResult",
    "fit_block_linear",
    "known_plaintext",
    "known_plaintext_attack",
]


def _row_view(spec: Spec) -> bool:
    """True when the transform acts on rows of length bw (`matrix` mode), which
    gives the attacker bh*C samples per block per leaked image."""
    rmts = spec.steps_of(RMT)
    return bool(rmts) and all(s.mode == "matrix" for s in rmts)


def _samples(blocks: np.ndarray, spec: Spec, rows: bool) -> np.ndarray:
    """[t, N, d] -> [t, N*m, n]: the regression samples of each block position."""
    if not rows:
        return blocks
    bh, bw = spec.block_size
    c = spec.image_shape[2]
    t, n = blocks.shape[:2]
    b = blocks.reshape(t, n, bh, bw, c).transpose(0, 1, 2, 4, 3)  # rows of length bw, per channel
    return b.reshape(t, n * bh * c, bw)


def _unsamples(samples: np.ndarray, spec: Spec, rows: bool, n_images: int) -> np.ndarray:
    if not rows:
        return samples
    bh, bw = spec.block_size
    c = spec.image_shape[2]
    t = samples.shape[0]
    b = samples.reshape(t, n_images, bh, c, bw).transpose(0, 1, 2, 4, 3)
    return b.reshape(t, n_images, bh * bw * c)


@dataclasses.dataclass
class BlockLinearEstimate:
    """An attacker's estimate of the disguise: out_block[j] ~ in_block[perm[j]] @ M[j] + bias[j],
    and of its inverse: in_block[perm[j]] ~ [out_block[j], 1] @ inverse[j]."""

    spec: Spec
    perm: np.ndarray
    matrices: np.ndarray  # [t, n, n], n = bw in row view, d otherwise
    bias: np.ndarray  # [t, n]
    inverse: np.ndarray  # [t, n + 1, n]
    rows: bool

    def reconstruct(self, disguised) -> np.ndarray:
        """Estimated plain images from disguised ones, clipped to 0..255.

        Uses the regression of plain on disguised blocks rather than inverting
        the forward fit: with noise it is the better linear estimate, and a
        block that never varied in the leaked pairs (MNIST's empty border)
        comes back as what it was there instead of amplified noise.
        """
        disguised = np.asarray(disguised)
        n_images = len(disguised)
        y = _samples(np_blocks(disguised, self.spec), self.spec, self.rows)
        ones = np.ones(y.shape[1:2] + (1,))
        x = np.empty_like(y)
        for j, i in enumerate(self.perm):
            x[i] = np.concatenate([y[j], ones], axis=1) @ self.inverse[j]
        blocks = _unsamples(x, self.spec, self.rows, n_images)
        return np.clip(np_images(blocks, self.spec), 0, 255)


def fit_block_linear(plain, disguised, spec: Spec) -> BlockLinearEstimate:
    """Known-plaintext regression: least-squares R_i and matched permutation from pairs.

    With more samples than unknowns per block the permutation is matched by the
    regression residual (every candidate source block is tried) and each R_i by
    least squares; with fewer it falls back to matching block-norm profiles,
    which orthogonal RMT preserves. A bias term absorbs the noise mean when the
    spec adds noise.
    """
    plain, disguised = np.asarray(plain), np.asarray(disguised)
    if plain.shape != disguised.shape or plain.ndim != 4:
        raise ValueError("`plain` and `disguised` must be matching [N, H, W, C] arrays. "
                         f"Received: {plain.shape} and {disguised.shape}")
    rows = _row_view(spec)
    intercept = not spec.is_noise_free
    xs = _samples(np_blocks(plain, spec), spec, rows)  # [t, m, n]
    ys = _samples(np_blocks(disguised, spec), spec, rows)
    t, m, n = xs.shape
    xs_aug = np.concatenate([xs, np.ones((t, m, 1))], axis=2) if intercept else xs
    if not spec.has(Permute):
        perm = np.arange(t)
    elif m > xs_aug.shape[2]:
        # Residual of regressing output block j on candidate source i, for all (i, j).
        q = [np.linalg.qr(xa)[0] for xa in xs_aug]  # orthonormal bases, [m, r]
        proj = np.stack([np.einsum("mr,tmn->trn", qi, ys) for qi in q])  # [i, j, r, n]
        energy = np.einsum("tmn,tmn->t", ys, ys)
        cost = energy[np.newaxis, :] - np.einsum("ijrn,ijrn->ij", proj, proj)
        perm = assign(cost)
    else:
        nx = np.linalg.norm(np_blocks(plain, spec), axis=2)  # [t, N]
        ny = np.linalg.norm(np_blocks(disguised, spec), axis=2)
        cost = np.abs(nx[:, np.newaxis, :] - ny[np.newaxis, :, :]).sum(axis=2)
        perm = assign(cost)
    mats = np.empty((t, n, n))
    bias = np.zeros((t, n))
    inverse = np.empty((t, n + 1, n))
    ones = np.ones((m, 1))
    for j in range(t):
        w, *_ = np.linalg.lstsq(xs_aug[perm[j]], ys[j], rcond=None)
        mats[j] = w[:n]
        if intercept:
            bias[j] = w[n]
        inverse[j], *_ = np.linalg.lstsq(np.concatenate([ys[j], ones], axis=1), xs[perm[j]], rcond=None)
    return BlockLinearEstimate(spec=spec, perm=perm, matrices=mats, bias=bias, inverse=inverse, rows=rows)


def _image_quality(reference, estimate) -> tuple[float, float]:
    import tensorflow as tf

    a = tf.convert_to_tensor(np.asarray(reference, np.float32))
    b = tf.convert_to_tensor(np.asarray(estimate, np.float32))
    psnr = tf.image.psnr(a, b, max_val=255.0).numpy()
    # The standard 11x11 window, shrunk for images smaller than that.
    size = min(11, int(a.shape[1]), int(a.shape[2]))
    ssim = tf.image.ssim(a, b, max_val=255.0, filter_size=size, filter_sigma=1.5 * size / 11).numpy()
    return float(np.mean(np.minimum(psnr, 100.0))), float(np.mean(ssim))


@dataclasses.dataclass(kw_only=True)
class KnownPlaintextResult(AttackResult):
    """Attack quality against the number k of leaked plain/disguised pairs.

    `by_k[str(k)]` holds PSNR, SSIM, the examiner's accuracy on the reconstructions
    and `attack_success` (that accuracy over the examiner's accuracy on the
    originals). `success` is the clipped success at the largest k.
    """

    name: str = "known_plaintext"
    level: int = 2
    examiner_accuracy_original: float
    by_k: dict = dataclasses.field(default_factory=dict)

    def headline(self) -> dict[str, float]:
        return {f"KPA success k={k}": v["attack_success"] for k, v in self.by_k.items()}

    def summary(self) -> str:
        rows = [f"k={k}: PSNR {v['psnr']:.1f} dB, SSIM {v['ssim']:.3f}, success {v['attack_success']:.2f}"
                for k, v in self.by_k.items()]
        return f"known-plaintext [{self.setting}]: " + "; ".join(rows)

    def pictures(self) -> list[tuple[str, np.ndarray]]:
        return [(f"KPA k={k}", recon) for k, recon in self.samples.get("reconstructed", {}).items()]

    def figure(self):
        from tfdisguise.plots import image_grid

        rows = [("original", self.samples["original"]), ("disguised", self.samples["disguised"])] + self.pictures()
        return image_grid([r for _, r in rows], [t for t, _ in rows],
                          f"known-plaintext reconstruction [{self.setting}]")


def known_plaintext_attack(
    leak_plain, leak_disguised, test_plain, test_disguised, test_y, spec: Spec, examiner,
    ks=(1, 10, 100), setting: str = "", n_samples: int = 6,
) -> KnownPlaintextResult:
    """Fits the disguise from the first k leaked pairs, for each k, and reconstructs test images.

    Reports PSNR/SSIM of the reconstructions and attack success: the examiner's
    accuracy on reconstructions over its accuracy on the originals.
    """
    if not ks:
        raise ValueError(f"`ks` must name at least one number of leaked pairs. Received: ks={ks!r}")
    base = accuracy(examiner, test_plain, test_y)
    by_k, recons = {}, {}
    for k in ks:
        if k > len(leak_plain):
            raise ValueError(f"k={k} exceeds the {len(leak_plain)} leaked pairs available.")
        est = fit_block_linear(leak_plain[:k], leak_disguised[:k], spec)
        recon = est.reconstruct(test_disguised)
        psnr, ssim = _image_quality(test_plain, recon)
        acc = accuracy(examiner, recon, test_y)
        by_k[str(k)] = {"psnr": psnr, "ssim": ssim, "examiner_accuracy": acc,
                        "attack_success": attack_success(acc, base)}
        recons[k] = recon[:n_samples]
    result = KnownPlaintextResult(setting=setting, examiner_accuracy_original=base, by_k=by_k,
                                  success=relative_success(by_k[str(max(ks))]["attack_success"]))
    result.samples = {"original": np.asarray(test_plain[:n_samples]),
                      "disguised": np.asarray(test_disguised[:n_samples]), "reconstructed": recons}
    return result


@register_attack("known_plaintext", level=2)
def known_plaintext(inp: AttackInput, *, ks=None, max_images: int | None = None,
                    n_samples: int = 6) -> KnownPlaintextResult:
    """Known-plaintext regression: least-squares block transforms and permutation from the first k leaked
    pairs; `KPA success k=...` is the examiner's accuracy on the reconstructions over its accuracy on the originals.

    `ks` defaults to those of 1, 10, 100 that the leak covers (else all pairs);
    `max_images` limits the victim images reconstructed (the first ones).
    """
    inp.require("known_plaintext", "leaked_plain", "leaked_disguised", "examiner", "victim_plain")
    n_leak = len(inp.leaked_plain)
    if ks is None:
        ks = tuple(k for k in (1, 10, 100) if k <= n_leak) or (n_leak,)
    n = max_images
    return known_plaintext_attack(inp.leaked_plain, inp.leaked_disguised, np.asarray(inp.victim_plain)[:n],
                                  np.asarray(inp.victim_disguised)[:n], np.asarray(inp.victim_labels)[:n], inp.spec,
                                  inp.examiner, ks=tuple(ks), setting=inp.setting, n_samples=n_samples)
