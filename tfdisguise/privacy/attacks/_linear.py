"""The key-free attacker's model of a linear spec: y_j = (x_pi(j) + e_before) M_j + e_after, block by block.

A spec made of at most one `RMT`, at most one `Permute` and any number of
built-in `Noise` steps disguises output block j as the plain block pi(j) times
one unknown matrix M_j, plus uniform noise added before and/or after the
transform. Whatever the order of RMT and permutation, the attacker only needs
pi and the M_j, so this module turns a spec into that model, or into the reason
why a spec is not of that form (`NotApplicable`).

Each block is viewed as an m x n matrix that M_j multiplies from the right:
- `matrix` mode: the bh*C rows of length bw (one per block row and channel),
  M_j is the bw x bw matrix R;
- `vector` mode: one row of length d = bh*bw*C, M_j is d x d.
Without RMT, the M_j are the identity and the attacker knows it.

Example:

>>> import numpy as np
>>> from tfdisguise.spec import Spec
>>> model = LinearModel.of(Spec.create((4, 4, 3), 2, rmt_mode="matrix", noise=30))
>>> model.view, model.m, model.n, model.noise_after, model.noise_before
('matrix', 6, 2, 30.0, 0.0)
>>> x = np.arange(2 * 48, dtype=float).reshape(2, 4, 4, 3)
>>> model.samples(x).shape  # [N, t, m, n]
(2, 4, 6, 2)
>>> bool(np.array_equal(model.images(model.samples(x)), x))
True
>>> LinearModel.of(Spec.create((4, 4, 1), 2, noise=30, noise_position="before")).noise_before
30.0
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfdisguise.spec import RMT, Noise, Permute, Spec

__all__ = ["LinearModel", "NotApplicable"]


class NotApplicable(Exception):
    """The spec is not of the form an attack models; the message says why."""


@dataclasses.dataclass(frozen=True)
class LinearModel:
    """What a key-free attacker knows of a linear spec (see the module docstring).

    kind: the RMT kind ("orthogonal", "projection"), or None without RMT.
    view: "matrix" or "vector": the row structure M_j acts on.
    noise_before / noise_after: total uniform noise level added before / after
        the transform (on the 0..255 scale).
    """

    spec: Spec
    kind: str | None
    view: str
    permutes: bool
    noise_before: float
    noise_after: float

    @classmethod
    def of(cls, spec: Spec, kinds: tuple[str, ...] = ("orthogonal", "projection")) -> LinearModel:
        """The model of `spec`; raises `NotApplicable` when the spec is not RMT/permutation/noise
        or its RMT kind is not in `kinds`."""
        other = [s.name for s in spec.steps if not isinstance(s, (RMT, Permute, Noise))]
        if other:
            raise NotApplicable(f"the spec has step(s) {other} that this attack does not model "
                                "(it models RMT, permutation and uniform noise only)")
        rmts, perms = spec.steps_of(RMT), spec.steps_of(Permute)
        if len(rmts) > 1 or len(perms) > 1:
            raise NotApplicable(f"the spec has {len(rmts)} RMT and {len(perms)} permutation steps; "
                                "this attack models at most one of each")
        if rmts and rmts[0].kind not in kinds:
            raise NotApplicable(f"the spec's RMT is {rmts[0].kind!r}; this attack models {list(kinds)} RMT")
        rmt_at = spec.steps.index(rmts[0]) if rmts else len(spec.steps)
        before = sum(s.noise_level for i, s in enumerate(spec.steps) if isinstance(s, Noise) and i < rmt_at)
        after = sum(s.noise_level for i, s in enumerate(spec.steps) if isinstance(s, Noise) and i > rmt_at)
        view = rmts[0].mode if rmts else "matrix"
        return cls(spec=spec, kind=rmts[0].kind if rmts else None, view=view, permutes=bool(perms),
                   noise_before=float(before), noise_after=float(after))

    @property
    def m(self) -> int:
        """Rows per block that the same M_j multiplies."""
        bh, _ = self.spec.block_size
        return bh * self.spec.image_shape[2] if self.view == "matrix" else 1

    @property
    def n(self) -> int:
        """Length of each row (the size of M_j)."""
        return self.spec.block_size[1] if self.view == "matrix" else self.spec.block_dim

    @property
    def var_before(self) -> float:
        """Variance of the noise added before the transform (U[0, N] has variance N^2/12)."""
        return self.noise_before ** 2 / 12.0

    @property
    def var_after(self) -> float:
        return self.noise_after ** 2 / 12.0

    def samples(self, images) -> np.ndarray:
        """[N, H, W, C] -> [N, t, m, n] float64, blocks numbered row-major like the library's."""
        x = np.asarray(images, np.float64)
        (gh, gw), (bh, bw), c = self.spec.grid, self.spec.block_size, self.spec.image_shape[2]
        x = x.reshape(len(x), gh, bh, gw, bw, c)
        if self.view == "vector":  # the library flattens a block as (row, column, channel)
            return x.transpose(0, 1, 3, 2, 4, 5).reshape(len(x), gh * gw, 1, bh * bw * c)
        return x.transpose(0, 1, 3, 2, 5, 4).reshape(len(x), gh * gw, bh * c, bw)

    def images(self, samples) -> np.ndarray:
        """[N, t, m, n] (or [N, t*m*n]) -> [N, H, W, C]; the inverse of `samples`."""
        s = np.asarray(samples, np.float64)
        (gh, gw), (bh, bw), c = self.spec.grid, self.spec.block_size, self.spec.image_shape[2]
        if self.view == "vector":
            x = s.reshape(-1, gh, gw, bh, bw, c).transpose(0, 1, 3, 2, 4, 5)
        else:
            x = s.reshape(-1, gh, gw, bh, c, bw).transpose(0, 1, 3, 2, 5, 4)
        return x.reshape(-1, *self.spec.image_shape)
