"""What a spec costs before anything is built: plan memory and work per image.

Every step reports its own `Step.cost(spec)`; `Spec.cost()` adds them up and
`Spec.create` refuses a spec whose plan would need more than `max_plan_bytes`
(2 GB by default), before any matrix is drawn, with the block sizes that fit.

The figures are estimates from the spec alone, computed in microseconds:

- `matrix_bytes`: the float32 matrices the disguise reads on its hot path.
- `plan_bytes`: the peak memory of deriving and holding them, counted as two
  copies of `matrix_bytes` (the plan's float32 matrices and one more: the
  backend's tensor where it cannot share their memory, or a transient copy when
  a plan is compiled from ops that it may not reorder in place), plus one
  float64 QR per thread while deriving. On TensorFlow, for a key's own plan,
  the measured peak is nearer one copy (see `constants`).
- `flops_per_image`: floating-point operations per image (a multiply-add counts
  2; one per element for added noise).

>>> from tfdisguise.spec import Spec
>>> cost = Spec.create((224, 224, 3), 16, rmt_mode="vector", noise=25).cost()
>>> cost.summary()
'plan 0.94 GB (0.46 GB of float32 matrices), 231.4 MFLOP per image'
>>> Spec.create((224, 224, 3), 16).cost().summary()  # matrix mode: R_i is 16x16
'plan 0.41 MB (0.20 MB of float32 matrices), 4.8 MFLOP per image'
"""

from __future__ import annotations

import dataclasses
import os

__all__ = [
    "Cost",
    "PlanTooLargeError",
    "check_plan_size",
    "fitting_block_sizes",
    "physical_memory_bytes",
    "transient_bytes",
]

# The plan's float32 matrices and one more copy (see the module docstring).
_PEAK_COPIES = 2


def transient_bytes(matrix_bytes: int) -> int:
    """The peak memory of deriving and holding `matrix_bytes` of float32 matrices."""
    return _PEAK_COPIES * matrix_bytes


def _fmt(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


@dataclasses.dataclass(frozen=True)
class Cost:
    """Plan memory and work per image of a spec (or of one step); estimates, in bytes and FLOPs."""

    plan_bytes: int = 0
    matrix_bytes: int = 0
    flops_per_image: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line, e.g. 'plan 1.39 GB (0.46 GB of float32 matrices), 231.4 MFLOP per image'."""
        return (f"plan {_fmt(self.plan_bytes)} ({_fmt(self.matrix_bytes)} of float32 matrices), "
                f"{self.flops_per_image / 1e6:.1f} MFLOP per image")


class PlanTooLargeError(ValueError):
    """A spec whose plan would need more memory than allowed; raised before anything is allocated."""


def physical_memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _square_blocks(image_shape) -> list[int]:
    h, w = image_shape[:2]
    return [b for b in range(1, min(h, w) + 1) if h % b == 0 and w % b == 0]


def fitting_block_sizes(spec, max_plan_bytes: int) -> list[int]:
    """Square block sizes (largest first) that divide the image and keep this spec's plan under the cap."""
    fits = []
    for b in _square_blocks(spec.image_shape):
        try:
            other = dataclasses.replace(spec, block_size=(b, b))
        except ValueError:  # a step that cannot run on that geometry
            continue
        if other.cost().plan_bytes <= max_plan_bytes:
            fits.append(b)
    return sorted(fits, reverse=True)


def check_plan_size(spec, max_plan_bytes: int | None, what: str = "`max_plan_bytes`") -> Cost:
    """Returns `spec.cost()`, or raises PlanTooLargeError when its plan needs more than `max_plan_bytes`.

    `max_plan_bytes=None` checks nothing. The error says the memory needed and
    suggests block sizes that fit; `what` names the limit in it.
    """
    cost = spec.cost()
    if max_plan_bytes is None or cost.plan_bytes <= max_plan_bytes:
        return cost
    fits = fitting_block_sizes(spec, max_plan_bytes)[:6]
    hint = (f"Block sizes that fit this image and these steps: {', '.join(map(str, fits))}."
            if fits else "No square block size fits this image with these steps.")
    if any(getattr(s, "mode", None) == "vector" for s in spec.steps):
        hint += " rmt_mode='matrix' (R_i of bw x bw instead of d x d) needs far less."
    if what == "`max_plan_bytes`":
        hint += " Pass a larger `max_plan_bytes` to allow it."
    bh, bw = spec.block_size
    steps = " > ".join(s.describe() for s in spec.steps)
    raise PlanTooLargeError(
        f"`block_size` ({bh}, {bw}) on images {spec.image_shape} with {steps} needs {_fmt(cost.plan_bytes)} "
        f"for its plan ({_fmt(cost.matrix_bytes)} of float32 matrices, built and copied once), over {what} "
        f"= {_fmt(max_plan_bytes)}. {hint} Received: block_size=({bh}, {bw})"
    )
