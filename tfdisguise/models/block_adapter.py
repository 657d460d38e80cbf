"""`block_adapter`: a learnable block-wise stem in front of any registered backbone.

The stem is what a block-wise disguise needs undone, in reverse order:

1. a per-position linear adapter (`BlockAdapter`: one d x d map per block
   position, identity-initialised), which can undo each block's secret matrix;
2. a learnable soft permutation of block positions (`SoftBlockPermutation`,
   Sinkhorn-normalised), when the disguise permutes blocks;
3. back in image layout (depth-to-space), the backbone: any family of the
   registry ("simple_cnn", "resnet20", "keras.applications.<Name>", ...).

Without permutation, the stem can undo any invertible block-wise linear map
exactly (A_j = M_j^-1), so the model contains the plain backbone. Note what
that means for privacy: a stem that *learns* to undo the disguise holds, in the
cloud's own model, an estimate of the inverse key (and of the permutation).

Options: `backbone`, `backbone_options` (a dict for the backbone family),
`block_size` (when there is no spec), `permutation` ("auto": Sinkhorn when the
spec permutes blocks; "sinkhorn"; "none"), `structure` ("auto": "matrix", a
bw x bw map per position, when the spec's RMT is in matrix mode, else "vector",
a d x d map), `channels` (adapter output channels, vector structure),
`lr_multiplier` (the stem's learning-rate multiplier under Adam),
`smoothness` (a natural-image prior on the adapter's output, see
`BlockAdapter`), `sinkhorn_iterations`, `temperature`.

Example:

>>> from tfdisguise.models import build
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((28, 28, 1), block_size=7, noise=100)
>>> import numpy as np
>>> x = np.zeros((4, 28, 28, 1), "float32")  # in practice: disguised training images
>>> model = build("block_adapter", (28, 28, 1), 10, adapt_data=x, spec=spec, backbone="simple_cnn")
>>> [layer.name for layer in model.layers[2:4]]
['block_adapter', 'block_permutation']
"""

from __future__ import annotations

from tfdisguise.models.block_layers import BlockAdapter, SoftBlockPermutation
from tfdisguise.models.block_vit import block_size_of
from tfdisguise.models.registry import APPLICATIONS_PREFIX, MODELS, register_model

__all__ = ["block_adapter"]

PERMUTATIONS = ("auto", "sinkhorn", "none")
STRUCTURES = ("auto", "vector", "matrix")


def _backbone(name: str):
    if name.startswith(APPLICATIONS_PREFIX):
        return MODELS["keras.applications"], {"application": name[len(APPLICATIONS_PREFIX):]}
    if name in MODELS and name not in ("keras.applications", "block_adapter"):
        return MODELS[name], {}
    choices = sorted(set(MODELS) - {"keras.applications", "block_adapter"}) + [APPLICATIONS_PREFIX + "<Name>"]
    raise ValueError(f"`backbone` must be one of {choices}. Received: backbone={name!r}")


@register_model("block_adapter", block_normalization=True)
def block_adapter(x, num_classes, *, input_shape, spec=None, backbone: str = "simple_cnn",
                  backbone_options: dict | None = None, block_size=None, permutation: str = "auto",
                  structure: str = "auto", channels: int | None = None, lr_multiplier: float = 1.0,
                  smoothness: float = 0.0, sinkhorn_iterations: int = 20, temperature: float = 1.0):
    """Per-position adapter, optional soft block permutation, then the backbone on the image layout."""
    block = block_size_of(spec, block_size, input_shape)
    if permutation not in PERMUTATIONS:
        raise ValueError(f"`permutation` must be one of {PERMUTATIONS}. Received: permutation={permutation!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"`structure` must be one of {STRUCTURES}. Received: structure={structure!r}")
    family, extra = _backbone(backbone)
    if permutation == "auto":
        permutation = "sinkhorn" if spec is not None and spec.has("permute") else "none"
    if structure == "auto":
        modes = {step.mode for step in spec.steps_of("rmt")} if spec is not None else set()
        structure = "matrix" if modes == {"matrix"} and channels is None else "vector"
    x = BlockAdapter(block, structure=structure, channels=channels, lr_multiplier=lr_multiplier,
                     smoothness=smoothness, name="block_adapter")(x)
    if permutation == "sinkhorn":
        x = SoftBlockPermutation(block, iterations=sinkhorn_iterations, temperature=temperature,
                                 lr_multiplier=lr_multiplier, name="block_permutation")(x)
    shape = (*tuple(input_shape)[:2], channels or tuple(input_shape)[2])
    return family(x, num_classes, input_shape=shape, spec=None, **extra, **(backbone_options or {}))
