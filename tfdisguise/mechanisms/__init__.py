"""Pure tensor functions that carry out a disguise, one module per mechanism.

Everything here is written with `keras.ops` (except the documented numpy escape
hatch, `numpy_bridge.py`), so the same code runs on the TensorFlow backend inside
`tf.data` and as a model layer on any backend.

- `rmt.py`, `permute.py`, `noise.py`: one module per step, each holding the
  `Step` (public parameters, material, per-image reference) and the op it builds.
  A new mechanism is one new module like these, registered with
  `tfdisguise.spec.register_step`.
- `op.py`: what every op declares (layout, backend, linear, stochastic, inverse).
- `linear.py`: `BlockLinear`, the affine block op that linear steps build and fuse into.
- `plan.py`: `Plan` (the fused ops of a key), `apply` and `invert`.
- `cost.py`: `Cost`, what a spec's plan needs in memory and FLOPs per image,
  known before anything is built (`Spec.cost`, checked by `Spec.create`).
- `constants.py`: how a plan's large arrays reach the backend (once, shared,
  never as copied graph constants).
- `layout.py`: the image and block layouts; `numpy_bridge.py`: running numpy ops.
- `eager.py`: `disguise` and `undisguise` on numpy arrays.
- `reference.py`: the independent per-image numpy reference.

>>> from tfdisguise.spec import Spec
>>> from tfdisguise.key import Key
>>> key = Key.generate(Spec.create((28, 28, 1), block_size=7, noise=100))
>>> [type(op).__name__ for op in key.plan.ops]  # rmt and permute fused
['BlockLinear', 'AddNoise']
"""

# The spec module first: it imports the built-in step modules below at its end,
# and they need its `Step` base class, so this order keeps the import acyclic.
import tfdisguise.spec  # noqa: F401  isort: skip
from tfdisguise.mechanisms.cost import Cost, PlanTooLargeError
from tfdisguise.mechanisms.eager import disguise, undisguise
from tfdisguise.mechanisms.layout import from_blocks, to_blocks
from tfdisguise.mechanisms.linear import BlockLinear, expand_matrix_mode
from tfdisguise.mechanisms.noise import AddNoise, SubtractMean
from tfdisguise.mechanisms.op import Op
from tfdisguise.mechanisms.plan import Plan, Uniform, apply, invert, uniform_source

__all__ = [
    "AddNoise",
    "BlockLinear",
    "Cost",
    "Op",
    "Plan",
    "PlanTooLargeError",
    "SubtractMean",
    "Uniform",
    "apply",
    "disguise",
    "expand_matrix_mode",
    "from_blocks",
    "invert",
    "to_blocks",
    "undisguise",
    "uniform_source",
]
