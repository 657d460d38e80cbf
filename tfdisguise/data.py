"""`wrap`: disguise a `tf.data.Dataset` on the fly, on whole batches.

Example:

>>> import numpy as np, tensorflow as tf
>>> from tfdisguise.key import Key
>>> from tfdisguise.spec import Spec
>>> key = Key.generate(Spec.create((28, 28, 1), block_size=7, noise=100))
>>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((10, 28, 28, 1), "uint8"), np.arange(10)))
>>> x, y = next(iter(wrap(ds.batch(4), key)))
>>> x.shape, x.dtype.name, y.numpy().tolist()
(TensorShape([4, 28, 28, 1]), 'float32', [0, 1, 2, 3])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdisguise import mechanisms, pixels
from tfdisguise.key import Key
from tfdisguise.mechanisms.constants import INLINE_BYTES
from tfdisguise.mechanisms.eager import lacks_channel_axis

__all__ = ["wrap", "batch_disguiser", "image_spec_of"]

IMAGE_KEY = "image"
# Unbatched input is disguised in chunks of this many images, then unbatched:
# the cost of a disguise is dominated by per-call overhead at batch size 1.
INTERNAL_BATCH = 256


def _tf_uniform_source():
    """A `uniform(shape, maxval)` for tf.data that gives fresh noise at every call, in every process.

    The seed of each bulk draw comes from a `tf.random.Generator` seeded from the
    OS's entropy. An op-level stateful seed op would not do: once
    `keras.utils.set_random_seed` (or `tf.random.set_seed`) has run, as in every
    seeded training, each new iterator of the dataset restarts that op's
    sequence, so every epoch would get the same noise. The generator is a
    variable, so its state carries on across iterators and is safe under
    parallel map calls; the bulk draw is stateless, which is about 1.5x faster
    than the stateful kernel on CPU.
    """
    generator = tf.random.Generator.from_non_deterministic_state()

    def uniform(shape, maxval):
        seed = generator.uniform_full_int([2], dtype=tf.int64)
        return tf.random.stateless_uniform(shape, seed, 0.0, maxval, dtype=tf.float32)

    return uniform


def image_spec_of(element_spec):
    """The TensorSpec of the image in a dataset element, and how to get/set it.

    Elements may be an image, a tuple whose first item is the image, or a dict
    with an "image" entry.
    """
    if isinstance(element_spec, tf.TensorSpec):
        return element_spec, (lambda e: e), (lambda e, x: x)
    if isinstance(element_spec, tuple) and element_spec and isinstance(element_spec[0], tf.TensorSpec):
        return element_spec[0], (lambda e: e[0]), (lambda e, x: (x,) + tuple(e[1:]))
    if isinstance(element_spec, dict) and isinstance(element_spec.get(IMAGE_KEY), tf.TensorSpec):

        def set_image(e, x):
            out = dict(e)
            out[IMAGE_KEY] = x
            return out

        return element_spec[IMAGE_KEY], (lambda e: e[IMAGE_KEY]), set_image
    raise ValueError(
        "`ds` elements must be images, tuples whose first item is the image, or dicts with an "
        f"'{IMAGE_KEY}' entry. Received: element_spec={element_spec}"
    )


def _xla(fn):
    # XLA fuses the layout changes, gather, cast and matmul of a linear op into
    # one pass over memory: about 2x faster than the op-by-op graph on CPU.
    return tf.function(fn, jit_compile=True, reduce_retracing=True)


def batch_disguiser(key: Key, jit_compile: bool = True):
    """The function `wrap` maps over batches: [N,H,W,C] -> disguised float32 (TensorFlow ops)."""
    plan = key.plan
    uniform = _tf_uniform_source() if plan.has_noise else None
    compile_fn = _xla if jit_compile else None

    def fn(images):
        return mechanisms.apply(images, plan, uniform, compile_fn=compile_fn)

    # One traced function: called eagerly (Beam's workers, scripts), a bare `fn` would build and compile a
    # fresh XLA function for each op at every call (0.13 s per 1,000 CIFAR images instead of 0.03 s).
    # Inside tf.data's map it is traced once either way.
    return tf.function(fn, reduce_retracing=True)


def _augmented(disguise, augment):
    """`disguise` preceded by the owner-side augmentation `augment`."""
    if not callable(augment):
        raise TypeError(
            f"`augment` must be a Keras layer or a callable on image batches. Received: augment={augment!r}")
    if isinstance(augment, keras.layers.Layer):
        layer = augment
        augment = lambda images: layer(tf.cast(images, "float32"), training=True)
    return lambda images: disguise(augment(images))


def _checked(disguise):
    return lambda images: disguise(pixels.assert_pixels(images))


def wrap(
    ds: tf.data.Dataset,
    key: Key,
    *,
    num_parallel_calls=tf.data.AUTOTUNE,
    prefetch: bool = True,
    jit_compile: bool = True,
    augment=None,
    check_pixels: bool = True,
):
    """Returns `ds` with every image disguised by `key`; the structure is kept.

    `ds` may be batched or not. Its images are `(H, W, C)` of the key's image
    shape; for a one-channel key, `(H, W)` too (grayscale without the channel
    axis), and then the disguised images get the axis: `(H, W, 1)`, as
    `tfdisguise.disguise` and the CLI give them.

    Batched input is disguised batch by batch;
    unbatched input is disguised in internal chunks of 256 and unbatched again,
    so either way the work runs on whole batches, with parallel calls and
    prefetch. Noise is drawn fresh each time an element is produced, so each
    epoch sees new noise (a form of augmentation).

    `model.fit(tfdisguise.wrap(ds, key))` works as written for a batched `ds`.
    `jit_compile=False` runs the linear ops op by op instead of through XLA.

    `check_pixels` (default on) asserts on each batch that float images are
    on the 0..255 scale that the key's spec means: a batch scaled to 0..1, out
    of range or not finite fails with `tf.errors.InvalidArgumentError` naming
    the problem, instead of training on images the noise drowns.

    `augment` (a Keras layer, such as `keras.layers.RandomTranslation`, or any
    callable on a batch `[N, H, W, C]`) is applied to the *plain* images on the
    owner's side, before the disguise: augmenting disguised images would break
    their block structure. Keras layers are called with `training=True`.

    A step whose op runs in numpy (`key.plan.runs_numpy`, the escape hatch for
    mechanisms such as a block cipher) runs through `tf.numpy_function`: such a
    pipeline works locally but cannot be sent to the tf.data service (see
    `tfdisguise.mechanisms.numpy_bridge`).

    For a plan whose matrices exceed 16 MB (large images in vector mode), the
    returned dataset has tf.data's default graph optimizations turned off:
    they would copy the matrices into the serialized pipeline graph. The
    option applies to the whole pipeline, the caller's steps before `wrap`
    included (about -12% throughput measured at 224x224x3, block 16).
    """
    if not isinstance(key, Key):
        raise TypeError(f"`key` must be a tfdisguise.Key. Received: key={type(key).__name__}")
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"`ds` must be a tf.data.Dataset. Received: ds={type(ds).__name__}")
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "wrap() runs inside tf.data and needs the TensorFlow Keras backend "
            f"(current: {keras.backend.backend()}). On other backends, put the Disguise layer in the model."
        )
    image_spec, get_image, set_image = image_spec_of(ds.element_spec)
    rank = image_spec.shape.rank
    expected = key.spec.image_shape
    channel_less = rank is not None and lacks_channel_axis(image_spec.shape.as_list(), expected)
    if channel_less:  # grayscale (N, H, W) or (H, W): the channel axis is added, as `tfdisguise disguise` does
        rank += 1
    if rank not in (3, 4):
        raise ValueError(
            f"The dataset's images must have rank 3 (H, W, C) or 4 (batch, H, W, C), with (H, W, C) = {expected} for "
            f"this key. Received: image shape {image_spec.shape}"
        )
    if not channel_less and not image_spec.shape[-3:].is_compatible_with(expected):
        got = tuple(image_spec.shape[-3:])
        # No parameter name: from the command line, the images are --input and the key --key.
        raise ValueError(
            f"The images have shape {got}, but key {key.fingerprint} was made for images of shape {expected}. Use "
            f"the key made for these images, or make one for them: tfdisguise keygen --image-shape "
            f"{','.join(str(d) for d in got)}"
        )
    disguise = batch_disguiser(key, jit_compile)
    if augment is not None:
        disguise = _augmented(disguise, augment)
    if check_pixels:  # on the plain images as they arrive, before any augmentation
        disguise = _checked(disguise)
    if channel_less:
        add_axis = disguise
        disguise = lambda images: add_axis(tf.expand_dims(images, -1))

    is_tuple = isinstance(ds.element_spec, tuple)

    def map_fn(*element):
        # tf.data unpacks tuple elements into arguments; anything else arrives whole.
        e = element if is_tuple else element[0]
        return set_image(e, disguise(get_image(e)))

    batched = rank == 4
    if not batched:
        ds = ds.batch(INTERNAL_BATCH)
    ds = ds.map(map_fn, num_parallel_calls=num_parallel_calls)
    if not batched:
        ds = ds.unbatch()
    if key.spec.cost().matrix_bytes > INLINE_BYTES:
        # tf.data's default graph rewrites serialize the pipeline's graph, and with it every captured tensor, so
        # a plan's large matrices (shared with the key, see mechanisms/constants.py) would be copied whole. At
        # 224x224x3, block 16, vector mode the first batch added 0.50 GB with the rewrites and 0.12 GB without.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds
