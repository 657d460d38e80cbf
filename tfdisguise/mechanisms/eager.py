"""`disguise` and `undisguise`: the owner's eager numpy entry points.

>>> import numpy as np
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> key = Key.generate(Spec.create((8, 8, 1), block_size=4))
>>> x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
>>> y = disguise(x, key)
>>> y.dtype.name, bool(np.allclose(undisguise(y, key), x, atol=1e-3))
('float32', True)
"""

from __future__ import annotations

import secrets

import keras
import numpy as np
from keras import ops

from tfdisguise.mechanisms.plan import apply, invert, uniform_source
from tfdisguise.pixels import check_pixels

__all__ = ["disguise", "lacks_channel_axis", "undisguise"]


def _fits(shape, expected) -> bool:
    return len(shape) == len(expected) and all(s is None or s == e for s, e in zip(shape, expected))


def lacks_channel_axis(shape, image_shape) -> bool:
    """Whether `shape` is `(H, W)` or `(N, H, W)` for a one-channel `image_shape` `(H, W, 1)`.

    Grayscale images often come without their channel axis (MNIST's arrays do);
    `tfdisguise disguise --input` adds it, and so do `disguise`, `wrap` and the
    `Disguise` layer. A shape that is a whole `(H, W, 1)` image stays one image.
    Unknown dimensions (None) match anything.

    >>> lacks_channel_axis((5, 28, 28), (28, 28, 1)), lacks_channel_axis((None, 28, 28), (28, 28, 1))
    (True, True)
    >>> lacks_channel_axis((28, 28, 1), (28, 28, 1)), lacks_channel_axis((5, 32, 32), (32, 32, 3))
    (False, False)
    """
    shape, image_shape = tuple(shape), tuple(image_shape)
    if image_shape[2:] != (1,) or len(shape) not in (2, 3) or (len(shape) == 3 and _fits(shape, image_shape)):
        return False
    return _fits(shape[-2:], image_shape[:2])


def disguise(images, key):
    """Disguises `images` with `key`, eagerly, and returns a float32 numpy array.

    For data pipelines use `tfdisguise.wrap`; inside a model use the `Disguise`
    layer. Noise is fresh at every call, seeded from the OS's CSPRNG.

    `images` is `(N, H, W, C)` or one `(H, W, C)` image of the key's image
    shape. For a one-channel key, images without the channel axis, `(N, H, W)`
    or `(H, W)`, are taken too, as `tfdisguise disguise --input` takes them: the
    result has the channel axis, `(N, H, W, 1)`, the shape a model trained on
    disguised images expects.

    Pixel values must be uint8 or float on the 0..255 scale; images scaled to
    0..1, out of range or not finite raise `tfdisguise.pixels.PixelRangeError`
    (a ValueError) naming them.
    """
    images = check_pixels(ops.convert_to_numpy(images))  # eager: numpy in, numpy out
    if lacks_channel_axis(images.shape, key.spec.image_shape):
        images = images[..., np.newaxis]
    seed = keras.random.SeedGenerator(secrets.randbits(31)) if key.plan.has_noise else None
    return ops.convert_to_numpy(apply(images, key.plan, uniform_source(seed) if seed else None))


def undisguise(disguised, key):
    """The owner's inverse of `disguise`, as a float32 numpy array.

    Exact (up to float error) when every step's op has an exact inverse
    (`key.plan.exact_inverse`), as for noise-free RMT and permutation pipelines:
    the inverse permutation and the inverse of each R_i (its transpose when
    orthogonal). With noise it is the least-squares estimate: the noise mean N/2
    is removed and the linear steps are inverted, so the zero-mean part of the
    noise remains in the result.
    """
    return ops.convert_to_numpy(invert(disguised, key.plan)).astype(np.float32)
