"""Noise: fresh uniform noise U[0, level] per element, drawn at every call.

It is the one step that is not a fixed function of the image: the disguise of
the same image differs at every call, and the owner's inverse can only remove
the noise's mean (a least-squares estimate).

>>> import numpy as np
>>> step = Noise(level=25)
>>> step.describe(), step.noise_level, step.adds_noise
('noise(25)', 25.0, True)
>>> op = step.build(None, None)
>>> op.stochastic, op.exact_inverse, op.layout
(True, False, 'image')
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from keras import ops

from tfdisguise.mechanisms.cost import Cost
from tfdisguise.mechanisms.op import Op
from tfdisguise.spec import Step, register_step

__all__ = ["AddNoise", "Noise", "SubtractMean"]


@dataclasses.dataclass(frozen=True)
class AddNoise(Op):
    """Adds U[0, level] noise, fresh at every call, in image layout."""

    level: float

    @property
    def stochastic(self) -> bool:
        return self.level > 0

    @property
    def exact_inverse(self) -> bool:
        return self.level == 0

    def __call__(self, x, uniform=None, dtype="float32"):
        if self.level == 0:
            return x
        if uniform is None:
            raise ValueError("This disguise adds noise, so `uniform` (a source of U[0, maxval) samples) is required.")
        return ops.cast(x, dtype) + uniform(ops.shape(x), self.level)

    def inverse(self) -> SubtractMean:
        return SubtractMean(self.level)


@dataclasses.dataclass(frozen=True)
class SubtractMean(Op):
    """The least-squares inverse of `AddNoise`: subtracts the noise mean level/2."""

    level: float

    def __call__(self, x, uniform=None, dtype="float32"):
        return ops.cast(x, dtype) - self.level / 2.0


@register_step
@dataclasses.dataclass(frozen=True)
class Noise(Step):
    """Fresh uniform noise U[0, level] per element, on the 0..255 scale."""

    name: ClassVar[str] = "noise"
    keyed: ClassVar[bool] = False
    adds_noise: ClassVar[bool] = True
    level: float = 0.0

    def __post_init__(self):
        level = float(self.level)
        if not np.isfinite(level) or level < 0:
            raise ValueError(f"`level` must be a finite number >= 0. Received: level={self.level!r}")
        object.__setattr__(self, "level", level)

    @property
    def noise_level(self) -> float:
        return self.level

    def build(self, material, spec):
        return AddNoise(level=self.level)

    def cost(self, spec) -> Cost:
        # One add per element (the draw itself is memory-bound random bits, not counted).
        return Cost(flops_per_image=int(np.prod(spec.image_shape)) if self.level else 0)

    def reference(self, image, material, spec, rng):
        if self.level == 0:
            return image
        return image + rng.uniform(0, self.level, size=image.shape)
