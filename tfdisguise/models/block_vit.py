"""`block_vit`: a Vision Transformer whose patch is the disguise's block.

Its patch embedding is unshared: block position j has its own d x D map E_j
(`BlockTokens`), and each token position its own learned embedding. Such a
model absorbs any block-wise invertible linear disguise exactly: for
`y_j = x_{perm[j]} @ M_j`, the model with `E'_j = M_j^-1 E_{perm[j]}` and the
position embeddings permuted the same way computes, on disguised images, what
the original computes on plain ones, because the pre-norm transformer and the
mean pooling treat tokens as a set. So training on disguised data searches the
same function class as training on plain data; only the noise is not absorbed.

It uses `keras.ops` and Keras layers only, so it runs on every Keras backend.

Options (besides `spec`): `block_size` (when there is no spec), `dim` (token
width), `depth` (transformer blocks), `heads`, `mlp_dim`, `dropout`,
`pool` ("mean" or "cls"), `embed_hidden` (when set, the embedding is a
per-token MLP: the unshared map to `embed_hidden` units with a per-position
bias, GELU, then a shared dense layer to `dim`; the first map is still
unshared and linear, so the disguise is still absorbed exactly).

Example:

>>> from tfdisguise.models import build
>>> from tfdisguise.spec import Spec
>>> spec = Spec.create((28, 28, 1), block_size=7, noise=100)
>>> import numpy as np
>>> x = np.zeros((4, 28, 28, 1), "float32")  # in practice: disguised training images
>>> model = build("block_vit", (28, 28, 1), 10, adapt_data=x, spec=spec, dim=32, depth=1, heads=2)
>>> model.output_shape, tuple(model.get_layer("block_tokens").kernel.shape)
((None, 10), (16, 49, 32))
"""

from __future__ import annotations

import keras
from keras import layers

from tfdisguise.models.block_layers import BlockTokens, PositionEmbedding
from tfdisguise.models.registry import register_model

__all__ = ["block_vit", "block_size_of", "encoder_block"]

POOLS = ("mean", "cls")


def block_size_of(spec, block_size, input_shape):
    """The block size to use: the spec's, else the `block_size` option (an error when neither or both disagree)."""
    if spec is not None:
        if block_size is not None and tuple(spec.block_size) != _pair(block_size):
            raise ValueError(f"`block_size` {block_size} disagrees with the spec's {tuple(spec.block_size)}. "
                             f"Received: block_size={block_size!r}")
        return tuple(spec.block_size)
    if block_size is None:
        raise ValueError(f"Block models need the disguise's `spec` or a `block_size` option for {tuple(input_shape)} "
                         "images. Received: spec=None, block_size=None")
    return _pair(block_size)


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def encoder_block(x, *, dim: int, heads: int, mlp_dim: int, dropout: float, name: str):
    """One pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name=f"{name}_attention")(y, y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    y = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(y)
    y = layers.Dropout(dropout, name=f"{name}_drop1")(y)
    y = layers.Dense(dim, name=f"{name}_mlp2")(y)
    y = layers.Dropout(dropout, name=f"{name}_drop2")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


@keras.saving.register_keras_serializable(package="tfdisguise")
class ClassToken(keras.layers.Layer):
    """Prepends one learned token (the CLS token) to the sequence: [N, t, D] -> [N, t + 1, D]."""

    def build(self, input_shape):
        self.token = self.add_weight(name="token", shape=(1, 1, int(input_shape[-1])), initializer="zeros")

    def call(self, x):
        token = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, keras.ops.shape(x)[2]))
        return keras.ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        t = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], t, input_shape[2])


@keras.saving.register_keras_serializable(package="tfdisguise")
class FirstToken(keras.layers.Layer):
    """The first token of the sequence (the CLS token's output): [N, t, D] -> [N, D]."""

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@register_model("block_vit", block_normalization=True)
def block_vit(x, num_classes, *, input_shape, spec=None, block_size=None, dim: int = 128, depth: int = 4,
              heads: int = 4, mlp_dim: int | None = None, dropout: float = 0.1, pool: str = "mean",
              embed_hidden: int | None = None):
    """Unshared block embedding, position embeddings, `depth` pre-norm transformer blocks, pooled softmax head."""
    block = block_size_of(spec, block_size, input_shape)
    if dim % heads:
        raise ValueError(f"`dim` must be a multiple of `heads`. Received: dim={dim}, heads={heads}")
    if pool not in POOLS:
        raise ValueError(f"`pool` must be one of {POOLS}. Received: pool={pool!r}")
    if embed_hidden:
        x = BlockTokens(block, embed_hidden, use_bias=True, name="block_tokens")(x)
        x = layers.Activation("gelu", name="embedding_gelu")(x)
        x = layers.Dense(dim, name="embedding_dense")(x)
    else:
        x = BlockTokens(block, dim, name="block_tokens")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    if pool == "cls":
        # After the position embedding: the CLS token has no block position, so a disguise's
        # permutation of positions leaves it alone.
        x = ClassToken(name="class_token")(x)
    x = layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(depth):
        x = encoder_block(x, dim=dim, heads=heads, mlp_dim=mlp_dim or 2 * dim, dropout=dropout, name=f"encoder{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="head_ln")(x)
    if pool == "cls":
        x = FirstToken(name="cls_pool")(x)
    else:
        x = layers.GlobalAveragePooling1D(name="mean_pool")(x)
    return layers.Dense(num_classes, activation="softmax", name="head")(x)
