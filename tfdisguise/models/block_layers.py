"""Keras layers that work block by block, in the disguise's own block geometry.

A block-wise disguise treats every block position j with its own secret map
(`x_{perm[j]} @ M_j`, see `tfdisguise.mechanisms.layout` for the numbering).
These layers give a model one learnable map per block position, so that it can
absorb such a disguise instead of fighting it:

- `BlockTokens`: image -> one token per block, an unshared (per-position) linear
  patch embedding `tokens[:, j] = block_j @ kernel[j]`.
- `PositionEmbedding`: a learned vector per token position, added.
- `BlockAdapter`: image -> image, a per-position linear map of each block
  (identity-initialised), written back in image layout (depth-to-space).
- `SoftBlockPermutation`: image -> image, a learnable doubly stochastic mixing of
  block positions (Sinkhorn-normalised), identity-initialised.

All of them are written with `keras.ops` only, so they run on every backend.

`lr_multiplier` scales a layer's parameters (`effective = lr_multiplier * raw`,
with the raw variable initialised at `initial / lr_multiplier`): under Adam,
whose steps do not depend on the gradient's scale, this multiplies the layer's
effective learning rate without touching the optimizer.

Example:

>>> import numpy as np
>>> x = np.arange(2 * 4 * 4, dtype="float32").reshape(2, 4, 4, 1)
>>> tokens = BlockTokens(block_size=2, units=3)(x)
>>> tuple(tokens.shape)
(2, 4, 3)
>>> adapted = BlockAdapter(block_size=2)(x)  # identity at initialisation
>>> bool(np.allclose(keras.ops.convert_to_numpy(adapted), x))
True
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfdisguise.mechanisms.layout import from_blocks, to_blocks

__all__ = ["BlockAdapter", "BlockTokens", "PositionEmbedding", "SoftBlockPermutation", "block_geometry"]


def block_geometry(image_shape, block_size):
    """The block geometry of `image_shape` (H, W, C) cut into `block_size` blocks, as a plain `Spec`.

    Raises ValueError (naming `block_size`) when the block does not divide the image.
    """
    from tfdisguise.spec import Spec

    return Spec(image_shape=tuple(int(v) for v in image_shape), block_size=block_size, steps=())


def _check_multiplier(value):
    value = float(value)
    if not value > 0:
        raise ValueError(f"`lr_multiplier` must be > 0. Received: lr_multiplier={value}")
    return value


class _ScaledInit(keras.initializers.Initializer):
    """`initial / scale`, so that the effective parameter `scale * raw` starts at `initial`."""

    def __init__(self, initial, scale):
        self.initial, self.scale = initial, scale

    def __call__(self, shape, dtype=None):
        return ops.cast(self.initial(shape) / self.scale, dtype or "float32")


@keras.saving.register_keras_serializable(package="tfdisguise")
class BlockTokens(keras.layers.Layer):
    """An unshared linear patch embedding: one token per block, one `d x units` map per block position.

    Token j is `block_j @ kernel[j]`, with blocks numbered row-major and flattened
    over (row, column, channel) as in the disguise (`to_blocks`). A disguise
    `y_j = x_{perm[j]} @ M_j` is absorbed exactly by `kernel'[j] = M_j^-1 @ kernel[perm[j]]`
    (and the matching permutation of whatever follows per position).

    Args:
        block_size: int or (bh, bw); must divide the image.
        units: the token width D.
        kernel_initializer: initializer of the [t, d, units] kernel. The default,
            an isotropic Gaussian with variance 1/d, is the same in distribution
            in every orthogonal basis of a block, so the initial model does not
            favour plain over orthogonally disguised blocks.
        use_bias: adds a learned per-position bias [t, units] (starts at 0).

    Input shape:
        `(batch, H, W, C)`.

    Output shape:
        `(batch, t, units)`, t = (H/bh)(W/bw).
    """

    def __init__(self, block_size, units: int, kernel_initializer=None, use_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"`units` must be >= 1. Received: units={units}")
        self.block_size = block_size
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer) if kernel_initializer else None

    def build(self, input_shape):
        self.geometry = block_geometry(input_shape[1:], self.block_size)
        t, d = self.geometry.num_blocks, self.geometry.block_dim
        init = self.kernel_initializer or keras.initializers.RandomNormal(stddev=float(np.sqrt(1.0 / d)))
        self.kernel = self.add_weight(name="kernel", shape=(t, d, self.units), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(t, self.units), initializer="zeros") if self.use_bias else None

    def call(self, x):
        blocks = to_blocks(x, self.geometry)  # [t, N, d]
        tokens = ops.einsum("tnd,tde->nte", blocks, self.kernel)
        return tokens if self.bias is None else tokens + self.bias

    def compute_output_shape(self, input_shape):
        geometry = block_geometry(input_shape[1:], self.block_size)
        return (input_shape[0], geometry.num_blocks, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(block_size=self.block_size, units=self.units, use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer)
                      if self.kernel_initializer else None)
        return config


@keras.saving.register_keras_serializable(package="tfdisguise")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector to each token position.

    Input shape:
        `(batch, t, D)`.

    Output shape:
        Same as the input.
    """

    def __init__(self, stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)

    def build(self, input_shape):
        self.embedding = self.add_weight(name="embedding", shape=tuple(input_shape[1:]),
                                         initializer=keras.initializers.TruncatedNormal(stddev=self.stddev))

    def call(self, x):
        return x + self.embedding

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(stddev=self.stddev)
        return config


@keras.saving.register_keras_serializable(package="tfdisguise")
class BlockAdapter(keras.layers.Layer):
    """A per-position linear map of each block, back in image layout: `out_j = block_j @ A_j + b_j`.

    `structure="vector"`: A_j is d x d (d = bh*bw*C), so the layer can undo any
    invertible block-wise linear map exactly (A_j = M_j^-1). `structure="matrix"`:
    A_j is bw x bw and multiplies every row of every channel of the block
    (B -> B @ A_j), the form of a `matrix`-mode RMT; it has bw^2 instead of d^2
    parameters per position and still undoes such an RMT exactly. Either way
    A_j starts at the identity, so the layer starts as a no-op.

    With more `channels` (vector structure only), each output pixel gets
    `channels` values: the first C start as the identity, the others as small
    random features.

    Args:
        block_size: int or (bh, bw); must divide the image.
        structure: "vector" or "matrix" (see above).
        channels: output channels (default: the input's).
        use_bias: adds a learned per-position bias (starts at 0).
        lr_multiplier: scales the layer's effective learning rate under Adam
            (see the module docstring).
        extra_stddev: the initial scale of the extra channels' weights.
        smoothness: when > 0, adds `smoothness` x the mean squared difference
            between neighbouring output pixels to the loss: a natural-image
            prior that favours adapters which undo a block transform.

    Input shape:
        `(batch, H, W, C)`.

    Output shape:
        `(batch, H, W, channels)`.
    """

    STRUCTURES = ("vector", "matrix")

    def __init__(self, block_size, structure: str = "vector", channels: int | None = None, use_bias: bool = True,
                 lr_multiplier: float = 1.0, extra_stddev: float = 0.1, smoothness: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not float(smoothness) >= 0:
            raise ValueError(f"`smoothness` must be >= 0. Received: smoothness={smoothness}")
        if structure not in self.STRUCTURES:
            raise ValueError(f"`structure` must be one of {self.STRUCTURES}. Received: structure={structure!r}")
        if channels is not None and int(channels) < 1:
            raise ValueError(f"`channels` must be >= 1. Received: channels={channels}")
        if structure == "matrix" and channels is not None:
            raise ValueError(f"`channels` needs structure='vector' (a matrix-structured adapter keeps the channels). "
                             f"Received: channels={channels}, structure={structure!r}")
        self.block_size = block_size
        self.structure = structure
        self.channels = None if channels is None else int(channels)
        self.use_bias = bool(use_bias)
        self.lr_multiplier = _check_multiplier(lr_multiplier)
        self.extra_stddev = float(extra_stddev)
        self.smoothness = float(smoothness)

    def _geometries(self, input_shape):
        h, w, c = (int(v) for v in input_shape[1:])
        out_c = self.channels or c
        return block_geometry((h, w, c), self.block_size), block_geometry((h, w, out_c), self.block_size)

    def build(self, input_shape):
        self.geometry, self.out_geometry = self._geometries(input_shape)
        t, d, d_out = self.geometry.num_blocks, self.geometry.block_dim, self.out_geometry.block_dim
        c, out_c = self.geometry.image_shape[2], self.out_geometry.image_shape[2]
        extra_stddev = self.extra_stddev
        bw = self.geometry.block_size[1]

        def initial(shape):
            if self.structure == "matrix":
                return np.broadcast_to(np.eye(bw, dtype=np.float32), shape).copy()
            # Identity from input (pixel, channel) to output (pixel, channel) for the first C channels.
            pixels = d // c
            eye = np.zeros((pixels, c, pixels, out_c), np.float32)
            for ch in range(min(c, out_c)):
                eye[:, ch, :, ch] = np.eye(pixels)
            extra = np.zeros((pixels, c, pixels, out_c), np.float32)
            if out_c > c:
                rng = np.random.default_rng(0)
                extra[..., c:] = rng.normal(0, extra_stddev, extra[..., c:].shape)
            return np.broadcast_to((eye + extra).reshape(d, d_out), shape).copy()

        shape = (t, bw, bw) if self.structure == "matrix" else (t, d, d_out)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=_ScaledInit(initial, self.lr_multiplier))
        self.bias = self.add_weight(name="bias", shape=(t, 1, d_out), initializer="zeros") if self.use_bias else None

    @property
    def matrices(self):
        """The effective per-position matrices A_j: [t, d, d_out] (vector) or [t, bw, bw] (matrix)."""
        return self.kernel * self.lr_multiplier

    def assign_matrices(self, matrices, bias=None):
        """Sets the effective A_j (and b_j, [t, d_out]), for example to an analytic inverse."""
        self.kernel.assign(np.asarray(matrices, np.float32).reshape(self.kernel.shape) / self.lr_multiplier)
        if bias is not None:
            if self.bias is None:
                raise ValueError("This BlockAdapter has no bias (use_bias=False). Received: bias")
            self.bias.assign(np.asarray(bias, np.float32).reshape(self.bias.shape) / self.lr_multiplier)

    def call(self, x):
        blocks = to_blocks(x, self.geometry)  # [t, N, d]
        if self.structure == "matrix":
            (bh, bw), c = self.geometry.block_size, self.geometry.image_shape[2]
            rows = ops.reshape(blocks, (self.geometry.num_blocks, -1, bh, bw, c))
            rows = ops.einsum("tnrwc,twv->tnrvc", rows, self.matrices)
            blocks = ops.reshape(rows, (self.geometry.num_blocks, -1, self.geometry.block_dim))
        else:
            blocks = ops.matmul(blocks, self.matrices)
        if self.bias is not None:
            blocks = blocks + self.bias * self.lr_multiplier
        out = from_blocks(blocks, self.out_geometry)
        if self.smoothness:
            dy = ops.mean(ops.square(out[:, 1:] - out[:, :-1]))
            dx = ops.mean(ops.square(out[:, :, 1:] - out[:, :, :-1]))
            self.add_loss(self.smoothness * (dx + dy))
        return out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self._geometries(input_shape)[1].image_shape)

    def get_config(self):
        config = super().get_config()
        config.update(block_size=self.block_size, structure=self.structure, channels=self.channels,
                      use_bias=self.use_bias, lr_multiplier=self.lr_multiplier, extra_stddev=self.extra_stddev,
                      smoothness=self.smoothness)
        return config


def sinkhorn(logits, iterations: int):
    """Alternately normalises rows and columns of exp(logits) in log space: a doubly stochastic matrix.

    >>> s = keras.ops.convert_to_numpy(sinkhorn(np.array([[2.0, 0.0], [0.0, 2.0]]), 30))
    >>> bool(np.allclose(s.sum(0), 1, atol=1e-4) and np.allclose(s.sum(1), 1, atol=1e-4))
    True
    """
    log_s = logits
    for _ in range(iterations):
        log_s = log_s - ops.logsumexp(log_s, axis=1, keepdims=True)
        log_s = log_s - ops.logsumexp(log_s, axis=0, keepdims=True)
    return ops.exp(log_s)


@keras.saving.register_keras_serializable(package="tfdisguise")
class SoftBlockPermutation(keras.layers.Layer):
    """A learnable soft permutation of block positions: `out_k = sum_j S[k, j] block_j`.

    S = Sinkhorn(logits / temperature) is doubly stochastic; it starts close to
    the identity (logits = `init_scale` * I) and becomes a permutation matrix as
    the logits sharpen. To undo a disguise whose block j is plain block perm[j],
    S should reach `S[perm[j], j] = 1`.

    Args:
        block_size: int or (bh, bw); must divide the image.
        iterations: Sinkhorn iterations per call.
        temperature: divides the logits; lower is sharper.
        init_scale: the initial diagonal logit (identity-leaning start).
        lr_multiplier: scales the logits' effective learning rate under Adam.

    Input shape:
        `(batch, H, W, C)`.

    Output shape:
        Same as the input.
    """

    def __init__(self, block_size, iterations: int = 20, temperature: float = 1.0, init_scale: float = 4.0,
                 lr_multiplier: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if int(iterations) < 1:
            raise ValueError(f"`iterations` must be >= 1. Received: iterations={iterations}")
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
        self.block_size = block_size
        self.iterations = int(iterations)
        self.temperature = float(temperature)
        self.init_scale = float(init_scale)
        self.lr_multiplier = _check_multiplier(lr_multiplier)

    def build(self, input_shape):
        self.geometry = block_geometry(input_shape[1:], self.block_size)
        t = self.geometry.num_blocks
        init_scale = self.init_scale
        self.logits = self.add_weight(
            name="logits", shape=(t, t),
            initializer=_ScaledInit(lambda shape: np.eye(shape[0], dtype=np.float32) * init_scale, self.lr_multiplier))

    @property
    def matrix(self):
        """The current doubly stochastic matrix S, [t, t]."""
        return sinkhorn(self.logits * (self.lr_multiplier / self.temperature), self.iterations)

    def assign_permutation(self, perm, sharpness: float = 50.0):
        """Sets S close to the permutation `out block k = in block perm[k]`."""
        t = self.geometry.num_blocks
        logits = np.zeros((t, t), np.float32)
        logits[np.arange(t), np.asarray(perm)] = sharpness
        self.logits.assign(logits * self.temperature / self.lr_multiplier)

    def call(self, x):
        blocks = to_blocks(x, self.geometry)  # [t, N, d]
        return from_blocks(ops.einsum("kj,jnd->knd", self.matrix, blocks), self.geometry)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(block_size=self.block_size, iterations=self.iterations, temperature=self.temperature,
                      init_scale=self.init_scale, lr_multiplier=self.lr_multiplier)
        return config
