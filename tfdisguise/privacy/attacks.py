"""Attacks the papers did not run: known-plaintext regression, block-norm thumbnail,
key-agnostic examiner.

The attacker knows the public spec (block size, mechanisms, noise level), never
the key. Each attack returns a result dataclass; `result.figure()` draws it.

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

import keras
import numpy as np

from tfdisguise.mechanisms import from_blocks, to_blocks
from tfdisguise.privacy.metrics import accuracy, attack_success
from tfdisguise.privacy.result import Result
from tfdisguise.spec import RMT, Noise, Permute, Spec

__all__ = [
    "BlockLinearEstimate",
    "BlockNormResult",
    "KeyAgnosticResult",
    "KnownPlaintextResult",
    "block_norm_attack",
    "block_norm_thumbnails",
    "fit_block_linear",
    "key_agnostic_attack",
    "known_plaintext_attack",
]

_NO_JSON = {"json": False}


def _np_blocks(images, spec: Spec) -> np.ndarray:
    """[N, H, W, C] -> [t, N, d] float64, the library's block layout."""
    return keras.ops.convert_to_numpy(to_blocks(np.asarray(images, np.float64), spec))


def _np_images(blocks, spec: Spec) -> np.ndarray:
    return keras.ops.convert_to_numpy(from_blocks(np.asarray(blocks, np.float64), spec))


def _row_view(spec: Spec) -> bool:
    """True when the transform acts on rows of length bw (`matrix` mode), which
    gives the attacker bh*C samples per block per leaked image."""
    rmts = [s for s in spec.steps if isinstance(s, RMT)]
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


def _assign(cost: np.ndarray) -> np.ndarray:
    """perm[j] = the source i assigned to output j, minimizing total cost[i, j]."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(cost.shape[1], dtype=np.int64)
    perm[cols] = rows
    return perm


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
        y = _samples(_np_blocks(disguised, self.spec), self.spec, self.rows)
        ones = np.ones(y.shape[1:2] + (1,))
        x = np.empty_like(y)
        for j, i in enumerate(self.perm):
            x[i] = np.concatenate([y[j], ones], axis=1) @ self.inverse[j]
        blocks = _unsamples(x, self.spec, self.rows, n_images)
        return np.clip(_np_images(blocks, self.spec), 0, 255)


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
        raise ValueError(f"`plain` and `disguised` must be matching [N, H, W, C] arrays. Received: {plain.shape} and {disguised.shape}")
    rows = _row_view(spec)
    intercept = any(isinstance(s, Noise) and s.level > 0 for s in spec.steps)
    xs = _samples(_np_blocks(plain, spec), spec, rows)  # [t, m, n]
    ys = _samples(_np_blocks(disguised, spec), spec, rows)
    t, m, n = xs.shape
    if intercept:
        xs_aug = np.concatenate([xs, np.ones((t, m, 1))], axis=2)
    else:
        xs_aug = xs
    permuted = any(isinstance(s, Permute) for s in spec.steps)
    if not permuted:
        perm = np.arange(t)
    elif m > xs_aug.shape[2]:
        # Residual of regressing output block j on candidate source i, for all (i, j).
        q = [np.linalg.qr(xa)[0] for xa in xs_aug]  # orthonormal bases, [m, r]
        proj = np.stack([np.einsum("mr,tmn->trn", qi, ys) for qi in q])  # [i, j, r, n]
        energy = np.einsum("tmn,tmn->t", ys, ys)
        cost = energy[np.newaxis, :] - np.einsum("ijrn,ijrn->ij", proj, proj)
        perm = _assign(cost)
    else:
        nx = np.linalg.norm(_np_blocks(plain, spec), axis=2)  # [t, N]
        ny = np.linalg.norm(_np_blocks(disguised, spec), axis=2)
        cost = np.abs(nx[:, np.newaxis, :] - ny[np.newaxis, :, :]).sum(axis=2)
        perm = _assign(cost)
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


@dataclasses.dataclass
class KnownPlaintextResult(Result):
    """Attack quality against the number k of leaked plain/disguised pairs."""

    setting: str
    examiner_accuracy_original: float
    by_k: dict = dataclasses.field(default_factory=dict)
    samples: dict = dataclasses.field(default_factory=dict, metadata=_NO_JSON, repr=False)

    def summary(self) -> str:
        rows = [f"k={k}: PSNR {v['psnr']:.1f} dB, SSIM {v['ssim']:.3f}, success {v['attack_success']:.2f}"
                for k, v in self.by_k.items()]
        return f"known-plaintext [{self.setting}]: " + "; ".join(rows)

    def figure(self):
        from tfdisguise.plots import image_grid

        rows = [self.samples["original"], self.samples["disguised"]]
        titles = ["original", "disguised"]
        for k, recon in self.samples.get("reconstructed", {}).items():
            rows.append(recon)
            titles.append(f"k={k}")
        return image_grid(rows, titles, f"known-plaintext reconstruction [{self.setting}]")


def known_plaintext_attack(
    leak_plain, leak_disguised, test_plain, test_disguised, test_y, spec: Spec, examiner,
    ks=(1, 10, 100), setting: str = "", n_samples: int = 6,
) -> KnownPlaintextResult:
    """Fits the disguise from the first k leaked pairs, for each k, and reconstructs test images.

    Reports PSNR/SSIM of the reconstructions and attack success: the examiner's
    accuracy on reconstructions over its accuracy on the originals.
    """
    base = accuracy(examiner, test_plain, test_y)
    result = KnownPlaintextResult(setting=setting, examiner_accuracy_original=base)
    result.samples = {"original": np.asarray(test_plain[:n_samples]), "disguised": np.asarray(test_disguised[:n_samples]),
                      "reconstructed": {}}
    for k in ks:
        if k > len(leak_plain):
            raise ValueError(f"k={k} exceeds the {len(leak_plain)} leaked pairs available.")
        est = fit_block_linear(leak_plain[:k], leak_disguised[:k], spec)
        recon = est.reconstruct(test_disguised)
        psnr, ssim = _image_quality(test_plain, recon)
        acc = accuracy(examiner, recon, test_y)
        result.by_k[str(k)] = {"psnr": psnr, "ssim": ssim, "examiner_accuracy": acc,
                               "attack_success": attack_success(acc, base)}
        result.samples["reconstructed"][k] = recon[:n_samples]
    return result


def block_norm_thumbnails(disguised, spec: Spec) -> np.ndarray:
    """[N, gh, gw] block norms of disguised images, in output block order.

    Orthogonal RMT preserves each block's norm, so without noise these equal the
    plain image's block norms (permuted, if the spec permutes). For noise after
    the transform, the expected noise energy d*N^2/3 is taken off.
    """
    blocks = _np_blocks(disguised, spec)
    energy = np.einsum("tnd,tnd->nt", blocks, blocks)
    noise = sum(s.level for s in spec.steps if isinstance(s, Noise))
    if noise:
        energy = np.maximum(energy - spec.block_dim * noise**2 / 3.0, 0.0)
    return np.sqrt(energy).reshape(-1, *spec.grid)


@dataclasses.dataclass
class BlockNormResult(Result):
    """Level-1 attack: classify victims from the block-norm thumbnail that RMT leaks."""

    setting: str
    examiner_accuracy: float
    plain_thumbnail_accuracy: float
    chance: float
    permutation_recovered: float | None
    samples: dict = dataclasses.field(default_factory=dict, metadata=_NO_JSON, repr=False)

    def summary(self) -> str:
        return (f"block-norm thumbnail [{self.setting}]: examiner accuracy {self.examiner_accuracy:.4f} "
                f"(on plain thumbnails {self.plain_thumbnail_accuracy:.4f}, chance {self.chance:.2f})")

    def figure(self):
        from tfdisguise.plots import image_grid

        return image_grid([self.samples["original"], self.samples["thumbnail"][..., np.newaxis]],
                          ["original", "block norms"], f"block-norm thumbnail [{self.setting}]")


def _thumbnail_classifier(shape, num_classes):
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])


def block_norm_attack(
    public_x, public_y, victim_disguised, victim_y, victim_plain, spec: Spec, *,
    num_classes: int, true_perm=None, epochs: int = 15, setting: str = "", seed: int = 0,
) -> BlockNormResult:
    """Trains a classifier on block-norm thumbnails of public plain images and applies it
    to the thumbnails of the victim's disguised images.

    A level-1 attacker has no pairs; it undoes the permutation by matching the
    mean and spread of each block position's norm between public and victim data.
    """
    keras.utils.set_random_seed(seed)
    pub = block_norm_thumbnails(public_x, Spec(spec.image_shape, spec.block_size, ()))
    vic = block_norm_thumbnails(victim_disguised, spec)
    perm_recovered = None
    if any(isinstance(s, Permute) for s in spec.steps):
        p_flat, v_flat = pub.reshape(len(pub), -1), vic.reshape(len(vic), -1)
        stats_p = np.stack([p_flat.mean(0), p_flat.std(0)], axis=1)
        stats_v = np.stack([v_flat.mean(0), v_flat.std(0)], axis=1)
        cost = np.abs(stats_p[:, np.newaxis, :] - stats_v[np.newaxis, :, :]).sum(axis=2)
        perm = _assign(cost)  # output position j came from public position perm[j]
        unperm = np.empty_like(v_flat)
        unperm[:, perm] = v_flat
        vic = unperm.reshape(vic.shape)
        if true_perm is not None:
            perm_recovered = float(np.mean(perm == np.asarray(true_perm)))
    scale = pub.max() or 1.0
    model = _thumbnail_classifier(pub.shape[1:], num_classes)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pub / scale, public_y, epochs=epochs, batch_size=128, verbose=0)
    plain_thumbs = block_norm_thumbnails(victim_plain, Spec(spec.image_shape, spec.block_size, ()))
    result = BlockNormResult(
        setting=setting,
        examiner_accuracy=accuracy(model, vic / scale, victim_y),
        plain_thumbnail_accuracy=accuracy(model, plain_thumbs / scale, victim_y),
        chance=1.0 / num_classes,
        permutation_recovered=perm_recovered,
    )
    result.samples = {"original": np.asarray(victim_plain[:6]), "thumbnail": vic[:6]}
    return result


@dataclasses.dataclass
class KeyAgnosticResult(Result):
    """Level-1 attack: a classifier trained under many random keys of the same spec."""

    setting: str
    accuracy: float
    num_keys: int
    train_images: int
    epochs: int
    chance: float

    def summary(self) -> str:
        return (f"key-agnostic examiner [{self.setting}]: accuracy {self.accuracy:.4f} on the victim's disguised images "
                f"({self.num_keys} random keys, {self.train_images} images, {self.epochs} epochs; chance {self.chance:.2f})")


def key_agnostic_attack(
    public_x, public_y, victim_disguised, victim_y, spec: Spec, *, num_classes: int,
    num_keys: int = 16, config=None, setting: str = "", progress: bool = False,
) -> KeyAgnosticResult:
    """The attacker disguises its own public images under `num_keys` fresh random keys
    of the victim's public spec, trains a classifier, then classifies the victim's
    disguised images. Accuracy near chance means the key matters."""
    import tensorflow as tf

    from tfdisguise.key import Key
    from tfdisguise.mechanisms import disguise
    from tfdisguise.train import TrainConfig, fit

    config = config or TrainConfig()
    chunks = np.array_split(np.arange(len(public_x)), num_keys)
    xs = np.concatenate([disguise(public_x[idx], Key.generate(spec)) for idx in chunks])
    ys = np.concatenate([public_y[idx] for idx in chunks])
    train = tf.data.Dataset.from_tensor_slices((xs, ys)).shuffle(len(xs), seed=config.seed).batch(config.batch_size)
    model, _ = fit(train.prefetch(tf.data.AUTOTUNE), None, input_shape=spec.image_shape, num_classes=num_classes,
                   adapt_data=xs[:4096], config=config, steps_per_epoch=-(-len(xs) // config.batch_size),
                   progress=progress)
    return KeyAgnosticResult(setting=setting, accuracy=accuracy(model, victim_disguised, victim_y), num_keys=num_keys,
                             train_images=len(xs), epochs=config.epochs, chance=1.0 / num_classes)
