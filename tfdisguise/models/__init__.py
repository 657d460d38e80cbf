"""Classifiers for disguised (or plain) images, one module per family.

Every model has the same shape: `build(name, input_shape, num_classes, ...)`
returns an uncompiled `keras.Model` with softmax output whose first layer is a
per-position `Normalization` (see `normalization.py`). A family is a function
registered with `register_model`; adding one is adding a module.

The block models (`block_vit`, `block_adapter`) work in the disguise's block
geometry, from the spec or a `block_size` option, with the per-position layers
of `block_layers.py`; see their modules for how they absorb a disguise.

Example:

>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype("float32")
>>> model = build("simple_cnn", (28, 28, 1), 10, adapt_data=x)
>>> model.output_shape, model.name
((None, 10), 'simple_cnn')
>>> "resnet20" in MODELS and "block_vit" in MODELS and "block_adapter" in MODELS
True
"""

from tfdisguise.models import applications, block_adapter, block_vit, cnn, resnet  # noqa: F401  (registers them)
from tfdisguise.models.block_layers import BlockAdapter, BlockTokens, PositionEmbedding, SoftBlockPermutation
from tfdisguise.models.normalization import VARIANCE_FLOOR
from tfdisguise.models.registry import MODEL_NAMES, MODELS, build, register_model

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "VARIANCE_FLOOR",
    "BlockAdapter",
    "BlockTokens",
    "PositionEmbedding",
    "SoftBlockPermutation",
    "build",
    "register_model",
]
