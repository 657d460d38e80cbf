"""Pixel values a key's spec can mean: uint8, or float on the 0..255 scale.

A key's noise level and its AES and negative-positive steps are defined on the 0..255 scale, so an image scaled to
0..1 is not an error the disguise can notice by itself: noise 100 simply drowns it and the model learns nothing.
These checks refuse such images where they enter, with a message that names the fix:

- `check_pixels` for numpy arrays (the eager `disguise`, the serving client);
- `assert_pixels` inside tf.data (`wrap`), as graph assertions on each batch.

>>> import numpy as np
>>> check_pixels(np.array([[0.0, 255.0]])).dtype.name
'float64'
>>> check_pixels(np.full((2, 3), 0.5))
Traceback (most recent call last):
...
tfdisguise.pixels.PixelRangeError: `images` at index 0, 1 look scaled to 0..1 ... (images * 255).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PixelRangeError", "assert_pixels", "check_pixels"]

_FLOATS = (np.float16, np.float32, np.float64)

_UNIT_HINT = "the key's spec means 0..255. Rescale to 0..255 (images * 255)."
_GRAPH_LINE = "tfdisguise: "  # the start of a graph assertion's message, see `assert_pixels`


class PixelRangeError(ValueError):
    """Images whose values a key's spec cannot mean (0..1 scale, out of range, NaN, a non-numeric dtype)."""


def _which(mask: np.ndarray) -> str:
    index = np.flatnonzero(mask)
    return "at index " + ", ".join(map(str, index[:5])) + (", ..." if len(index) > 5 else "")


def check_pixels(images) -> np.ndarray:
    """`images` (first axis: images) as an array, or PixelRangeError naming the images at fault and the fix.

    uint8 always passes. Floats must be finite and within 0..255, and an image whose values never pass 1 and
    include fractions is taken for a 0..1 image (on the 0..255 scale pixels are whole numbers; an all-dark
    image of zeros and ones passes).
    """
    images = np.asarray(images)
    if images.dtype == np.uint8 or images.size == 0:
        return images
    if images.dtype.type not in _FLOATS and not np.issubdtype(images.dtype, np.integer):
        raise PixelRangeError(f"`images` must be uint8, or float in 0..255. Received: dtype={images.dtype}. Convert "
                              f"them: images.astype(np.uint8) if their values are 0..255, else rescale to 0..255 "
                              f"first.")
    flat = images.reshape(len(images), -1) if images.ndim > 1 else images.reshape(1, -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise PixelRangeError(f"`images` {_which(~finite)} hold NaN or infinite values; the key's spec means pixel "
                              f"values in 0..255. Replace them (np.nan_to_num) or drop those images.")
    low, high = flat.min(axis=1), flat.max(axis=1)
    outside = (low < 0) | (high > 255)
    if outside.any():
        raise PixelRangeError(f"`images` {_which(outside)} have values from {low.min():g} to {high.max():g}, "
                              f"outside 0..255, which the key's spec means. Rescale to 0..255.")
    unit = (high <= 1) & (flat != np.round(flat)).any(axis=1)
    if unit.any():
        raise PixelRangeError(f"`images` {_which(unit)} look scaled to 0..1 (no value above 1, and fractions): "
                              + _UNIT_HINT)
    return images


def assert_pixels(x):
    """`x` (a batch of images in tf.data) with graph assertions that its values are on the 0..255 scale.

    The same rules as `check_pixels`, applied to the batch as a whole (a batch whose values never pass 1 and
    include fractions is a 0..1 batch). A failure raises `tf.errors.InvalidArgumentError` when the batch is
    produced, with the message and the batch's range. TensorFlow wraps that message in its own report (the
    node, the iterator) and escapes newlines and apostrophes, so each message is one line without
    apostrophes, marked `tfdisguise:` to be found in that report.
    """
    import tensorflow as tf

    if x.dtype == tf.uint8:
        return x
    xf = tf.cast(x, tf.float32)
    low, high = tf.reduce_min(xf), tf.reduce_max(xf)
    fractions = tf.reduce_any(tf.not_equal(xf, tf.round(xf)))
    checks = [
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(xf)),
                            [_GRAPH_LINE + "the images hold NaN or infinite values; the key means pixel values in "
                             "0..255. Replace them (np.nan_to_num) or drop those images."]),
        tf.debugging.Assert(tf.logical_and(low >= 0, high <= 255),
                            [_GRAPH_LINE + "the images have values outside 0..255, the scale the key means. Rescale "
                             "to 0..255. Their min and max:", low, high]),
        tf.debugging.Assert(tf.logical_not(tf.logical_and(high <= 1, fractions)),
                            [_GRAPH_LINE + "the images look scaled to 0..1 (no value above 1, and fractions); the "
                             "key means 0..255. Rescale to 0..255 (images * 255)."]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(x)
