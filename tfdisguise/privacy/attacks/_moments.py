"""First and second moments of block samples, with the public noise taken out, and whitening.

`Moments` holds, for blocks viewed as m x n matrices (see `_linear`), the mean of
every block position [t, m, n] and the covariance of the whole flattened image
[D, D] (D = t*m*n, position-major), whose d x d blocks are the within-position
(diagonal) and cross-position covariances.

Under y_j = (x_pi(j) + e_b) M_j + e_a, with uniform noise of public level, the
moments match once the noise is accounted for:

    E[y_j] - N_a/2 = (E[x_i] + N_b/2) M_j
    Cov(y_j, y_j') - [j = j'] s_a^2 I = K_j^T (Cov(x_i, x_i') + [i = i'] s_b^2 I) K_j'

with K_j = I_m (x) M_j. `effective` returns both sides in that form.

Example (noise after the transform: its mean and variance come off the disguised side):

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> from tfdisguise.privacy.attacks._linear import LinearModel
>>> model = LinearModel.of(Spec.create((2, 2, 1), 2, rmt="orthogonal", rmt_mode="vector", permute=False,
...                                    noise=60))
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(100, 10, (20000, 1, 1, 4))
>>> y = x + rng.uniform(0, 60, x.shape)  # M = I
>>> plain, disguised = effective(model, Moments.of(x), Moments.of(y))
>>> bool(np.allclose(plain.mean, disguised.mean, atol=1)), bool(np.allclose(plain.cov, disguised.cov, atol=8))
(True, True)
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Moments", "effective", "inverse_sqrt"]


@dataclasses.dataclass
class Moments:
    """mean [t, m, n] and covariance [D, D] of block samples (position-major, rows of n)."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, samples, chunk: int = 4096) -> Moments:
        """Moments of [N, t, m, n] samples (the covariance divides by N)."""
        s = np.asarray(samples, np.float64)
        mean = s.mean(axis=0)
        flat = s.reshape(len(s), -1)
        centre = mean.reshape(-1)
        cov = np.zeros((flat.shape[1], flat.shape[1]))
        for start in range(0, len(flat), chunk):  # bounded memory for large public sets
            part = flat[start:start + chunk] - centre
            cov += part.T @ part
        return cls(mean=mean, cov=cov / len(s))

    @property
    def t(self) -> int:
        return self.mean.shape[0]

    @property
    def m(self) -> int:
        return self.mean.shape[1]

    @property
    def n(self) -> int:
        return self.mean.shape[2]

    @property
    def d(self) -> int:
        return self.m * self.n

    def blocks(self) -> np.ndarray:
        """[t, t, d, d]: blocks()[i, j] is Cov(block i, block j)."""
        t, d = self.t, self.d
        return self.cov.reshape(t, d, t, d).transpose(0, 2, 1, 3)

    def pooled(self) -> np.ndarray:
        """[t, n, n]: each position's row covariance, averaged over its m rows (what M_j acts on)."""
        t, m, n = self.t, self.m, self.n
        within = self.blocks()[np.arange(t), np.arange(t)].reshape(t, m, n, m, n)
        return np.einsum("trarb->tab", within) / m

    @property
    def scale(self) -> float:
        """The mean variance per element (> 0): puts second moments on the scale of first ones."""
        return max(float(np.trace(self.cov)) / len(self.cov), 1e-12)

    def transformed(self, right: np.ndarray) -> Moments:
        """The moments of samples multiplied from the right by right[i] (n x n) at position i."""
        t, m, n = self.t, self.m, self.n
        mean = np.einsum("trn,tnp->trp", self.mean, right)
        kron = np.stack([np.kron(np.eye(m), r) for r in right])  # [t, d, d]
        blocks = np.matmul(np.matmul(kron.transpose(0, 2, 1)[:, None], self.blocks()), kron[None])
        return Moments(mean=mean, cov=blocks.transpose(0, 2, 1, 3).reshape(t * m * n, t * m * n))


def effective(model, public: Moments, victim: Moments) -> tuple[Moments, Moments]:
    """(plain, disguised): the raw moments of public plain and victim disguised samples, with the known
    noise moved to where the model says it is.

    Noise before the transform is added to the plain side (mean N_b/2, variance
    N_b^2/12 on the diagonal); noise after it is taken off the disguised side.
    """
    eye = np.eye(len(public.cov))
    plain = Moments(mean=public.mean + model.noise_before / 2.0, cov=public.cov + model.var_before * eye)
    disguised = Moments(mean=victim.mean - model.noise_after / 2.0, cov=victim.cov - model.var_after * eye)
    return plain, disguised


def inverse_sqrt(cov: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """((C + eps I)^-1/2, (C + eps I)^1/2) of a symmetric matrix, negative eigenvalues clipped to 0.

    >>> w, w_inv = inverse_sqrt(np.diag([4.0, 0.0]), eps=1.0)
    >>> np.round(w, 3).tolist(), np.round(w_inv @ w, 6).tolist()
    ([[0.447, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    values, vectors = np.linalg.eigh((cov + cov.T) / 2.0)
    values = np.maximum(values, 0.0) + eps
    return (vectors / np.sqrt(values)) @ vectors.T, (vectors * np.sqrt(values)) @ vectors.T
