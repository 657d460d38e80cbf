"""block_vit and block_adapter: exact absorption of a disguise, training under wrap, save/load, export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key
from test_leaks import leaks

from tfdisguise import disguise, export, models, wrap
from tfdisguise.mechanisms import to_blocks


def pixels(shape, n=2):
    """Adaptation images for `models.build` (which requires them)."""
    return np.zeros((n, *shape), "float32")

TINY_VIT = {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0}


def _blocks(image, spec):
    """[H, W, C] -> [t, d] numpy."""
    return keras.ops.convert_to_numpy(to_blocks(image[np.newaxis], spec))[:, 0]


def absorbing_copy(model, key):
    """A copy of `model` for inputs disguised by `key` (noise-free), built analytically.

    With y_j = x_{perm[j]} @ M_j: the input normalization keeps only the mean, moved
    into the disguised basis (mean' = disguise(mean), variance 1); the per-position
    map absorbs M_j^-1 and the plain per-pixel scaling; whatever follows per
    position (position embeddings, the soft permutation) is permuted to match.
    """
    spec = key.spec
    linear = key.plan.linear
    perm = np.arange(spec.num_blocks) if linear.perm is None else linear.perm
    inverse = np.linalg.inv(linear.dense_matrices().astype(np.float64))  # M_j^-1
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())

    norm = model.get_layer("normalization")
    mean = keras.ops.convert_to_numpy(norm.adapt_mean).astype(np.float64)
    std = np.sqrt(np.maximum(keras.ops.convert_to_numpy(norm.adapt_variance), keras.backend.epsilon() ** 2))
    new_norm = copy.get_layer("normalization")
    new_norm.adapt_mean.assign(disguise(mean[np.newaxis], key)[0])
    new_norm.adapt_variance.assign(np.ones_like(mean))
    new_norm.finalize_state()
    inv_std = 1.0 / _blocks(std, spec)[perm]  # [t, d]: the plain scaling of the block that lands at j
    # M_j^-1 diag(1/s_{perm[j]}): disguised normalized block j -> plain normalized block perm[j].
    undo = inverse * inv_std[:, np.newaxis, :]

    names = {layer.name for layer in model.layers}
    if "block_tokens" in names:
        kernel = keras.ops.convert_to_numpy(model.get_layer("block_tokens").kernel)
        copy.get_layer("block_tokens").kernel.assign(undo @ kernel[perm])
        if model.get_layer("block_tokens").bias is not None:
            bias = keras.ops.convert_to_numpy(model.get_layer("block_tokens").bias)
            copy.get_layer("block_tokens").bias.assign(bias[perm])
        pos = keras.ops.convert_to_numpy(model.get_layer("position_embedding").embedding)
        copy.get_layer("position_embedding").embedding.assign(pos[perm])
    else:
        adapter = model.get_layer("block_adapter")
        matrices = keras.ops.convert_to_numpy(adapter.matrices)
        bias = keras.ops.convert_to_numpy(adapter.bias * adapter.lr_multiplier)
        if adapter.structure == "matrix":
            # M_j = kron(I_bh, kron(R_j, I_C)): R_j sits in M_j's first row of pixels, channel 0. With one
            # scale per block (block normalization), M_j^-1 diag(1/s) is R_j^-1 / s, still of that form.
            c, bw = spec.image_shape[2], spec.block_size[1]
            # The plan keeps matrix mode in row form (R_j itself) since issue 10.
            small = linear.matrices if linear.rows is not None else linear.matrices[:, :bw * c:c, :bw * c:c]
            small_inverse = np.linalg.inv(small.astype(np.float64))
            assert np.allclose(inv_std, inv_std[:, :1]), "matrix structure needs one scale per block"
            undo = small_inverse * inv_std[:, :1, np.newaxis]
        copy.get_layer("block_adapter").assign_matrices(undo @ matrices[perm], bias[perm])
        if "block_permutation" in names:
            # Adapter output j is plain block perm[j], so S'[k, j] = S[k, perm[j]]; Sinkhorn commutes
            # with permuting columns, so permuting the logits' columns gives exactly that.
            logits = keras.ops.convert_to_numpy(model.get_layer("block_permutation").logits)
            copy.get_layer("block_permutation").logits.assign(logits[:, perm])
    return copy


def _models_and_inputs(name, key, rng, **options):
    x = rng.integers(0, 256, (64, *key.spec.image_shape)).astype("float32")
    model = models.build(name, key.spec.image_shape, 5, adapt_data=x, spec=key.spec, **options)
    return model, x


def _predict(model, x):
    return model.predict(x, verbose=0, batch_size=64)


@pytest.mark.parametrize("mode,shape,block", [("matrix", (8, 8, 1), 4), ("vector", (8, 8, 1), 4),
                                              ("matrix", (8, 8, 3), 2), ("vector", (6, 6, 2), 3)])
@pytest.mark.parametrize("pool,embed_hidden", [("mean", None), ("cls", None), ("mean", 12)])
def test_block_vit_absorbs_the_disguise_exactly(rng, mode, shape, block, pool, embed_hidden):
    key = make_key(image_shape=shape, block_size=block, rmt="orthogonal", rmt_mode=mode)
    model, x = _models_and_inputs("block_vit", key, rng, pool=pool, embed_hidden=embed_hidden, **TINY_VIT)
    if embed_hidden:  # a non-zero per-position bias, so that a wrong permutation of it would show
        layer = model.get_layer("block_tokens")
        layer.bias.assign(rng.normal(0, 1, tuple(layer.bias.shape)))
    absorbing = absorbing_copy(model, key)
    y = disguise(x, key)
    plain_out, disguised_out = _predict(model, x), _predict(absorbing, y)
    np.testing.assert_allclose(disguised_out, plain_out, atol=2e-5)
    # Negative control: the plain model on disguised inputs is another function.
    assert np.abs(_predict(model, y) - plain_out).max() > 1e-2


def test_block_vit_absorbs_a_projection_disguise(rng):
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="projection", rmt_mode="vector")
    model, x = _models_and_inputs("block_vit", key, rng, **TINY_VIT)
    np.testing.assert_allclose(_predict(absorbing_copy(model, key), disguise(x, key)), _predict(model, x), atol=1e-4)


@pytest.mark.parametrize("mode,structure,shape", [("matrix", "auto", (8, 8, 1)), ("matrix", "auto", (8, 8, 3)),
                                                  ("matrix", "vector", (8, 8, 2)), ("vector", "auto", (8, 8, 1))])
def test_block_adapter_absorbs_the_disguise_exactly(rng, mode, structure, shape):
    key = make_key(image_shape=shape, block_size=4, rmt="orthogonal", rmt_mode=mode, permute=False)
    model, x = _models_and_inputs("block_adapter", key, rng, backbone="simple_cnn", lr_multiplier=3.0,
                                  structure=structure)
    assert "block_permutation" not in {layer.name for layer in model.layers}
    expected = "matrix" if (mode, structure) == ("matrix", "auto") else "vector"
    assert model.get_layer("block_adapter").structure == expected
    absorbing = absorbing_copy(model, key)
    y = disguise(x, key)
    np.testing.assert_allclose(_predict(absorbing, y), _predict(model, x), atol=2e-5)
    assert np.abs(_predict(model, y) - _predict(model, x)).max() > 1e-2


def test_block_adapter_with_soft_permutation_absorbs_a_permuting_disguise(rng):
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")
    model, x = _models_and_inputs("block_adapter", key, rng, backbone="simple_cnn", lr_multiplier=2.0)
    # Start the plain model at an exact identity permutation, so that the copy's hard permutation matches it.
    model.get_layer("block_permutation").assign_permutation(np.arange(key.spec.num_blocks))
    absorbing = absorbing_copy(model, key)
    np.testing.assert_allclose(_predict(absorbing, disguise(x, key)), _predict(model, x), atol=2e-5)


def test_block_size_comes_from_the_spec_or_an_option():
    model = models.build("block_vit", (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)), block_size=2, **TINY_VIT)
    assert tuple(model.get_layer("block_tokens").kernel.shape) == (16, 4, 16)
    with pytest.raises(ValueError, match="`block_size` option"):
        models.build("block_vit", (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)))
    with pytest.raises(ValueError, match=r"`block_size` \(3, 3\) must divide the image shape"):
        models.build("block_vit", (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)), block_size=3)
    with pytest.raises(ValueError, match="`backbone` must be one of"):
        models.build("block_adapter", (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)), block_size=4,
                     backbone="block_adapter")
    with pytest.raises(ValueError, match="`permutation` must be one of"):
        models.build("block_adapter", (8, 8, 1), 3, adapt_data=pixels((8, 8, 1)), block_size=4, permutation="hungarian")


def test_block_adapter_takes_any_backbone():
    key = make_key(image_shape=(32, 32, 3), block_size=4, rmt="orthogonal", noise=10)
    for backbone in ("resnet20", "keras.applications.MobileNetV2"):
        model = models.build("block_adapter", (32, 32, 3), 4, adapt_data=pixels((32, 32, 3)), spec=key.spec,
                             backbone=backbone)
        assert model.output_shape == (None, 4)
        assert {"block_adapter", "block_permutation"} <= {layer.name for layer in model.layers}
    model = models.build("block_adapter", (32, 32, 3), 4, adapt_data=pixels((32, 32, 3)), spec=key.spec, channels=8,
                         permutation="none",
                         backbone="resnet20", backbone_options={"weight_decay": 0.0})
    assert model.get_layer("block_adapter").output.shape == (None, 32, 32, 8)


@pytest.mark.parametrize("name,options", [("block_vit", TINY_VIT),
                                          ("block_adapter", {"backbone": "simple_cnn", "lr_multiplier": 5.0})])
def test_trains_under_wrap_saves_loads_and_exports_without_key_material(rng, tmp_path, name, options):
    key = make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector", noise=10)
    x = rng.integers(0, 256, (64, 14, 14, 1), dtype=np.uint8)
    y = np.arange(64) % 2
    model = models.build(name, (14, 14, 1), 2, adapt_data=disguise(x, key), spec=key.spec, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(wrap(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), key), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    probe = disguise(x[:8], key)
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-6)

    version_dir = export(loaded, str(tmp_path / "saved_models"), name, key=key)
    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = served(image=tf.constant(probe))["probabilities"].numpy()
    np.testing.assert_allclose(out, model.predict(probe, verbose=0), atol=1e-5)
    for root, _, files in os.walk(version_dir):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert leaks(fh.read(), key) == [], f
    with open(path, "rb") as fh:
        assert leaks(fh.read(), key) == []
    _assert_no_key_matrix_in_weights(loaded, key)


def _assert_no_key_matrix_in_weights(model, key):
    """No weight (nor a block layer's effective matrix) starts with a key matrix, its inverse or transpose."""
    secrets_ = []
    for m in key.plan.linear.matrices:
        secrets_ += [m, m.T, np.linalg.inv(m)]
    for material in key.materials:
        if material is not None and material.dtype.kind == "f":
            secrets_ += list(material)
    arrays = [(w.path, keras.ops.convert_to_numpy(w)) for w in model.weights]
    arrays += [(layer.name, keras.ops.convert_to_numpy(layer.matrices)) for layer in model.layers
               if hasattr(layer, "matrices")]
    for path, w in arrays:
        if w.ndim < 2:
            continue
        stack = w.reshape(-1, *w.shape[-2:]).astype(np.float64)
        for s in secrets_:
            r, c = s.shape
            if stack.shape[1] >= r and stack.shape[2] >= c:
                assert not np.any(np.all(np.abs(stack[:, :r, :c] - s) < 1e-4, axis=(1, 2))), path


def test_block_models_use_keras_ops_only():
    # Keras's numpy and JAX backends need jax, which this environment lacks; so check the source instead:
    # the block models and every tfdisguise module they import use no TensorFlow, only keras.ops.
    import ast
    import importlib

    todo, seen = ["tfdisguise.models.block_vit", "tfdisguise.models.block_adapter"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = importlib.import_module(name)
        with open(module.__file__) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "tensorflow" for n in names), f"{name} imports TensorFlow"
            todo += [n for n in names if n.startswith("tfdisguise.models") or n == "tfdisguise.mechanisms.layout"]
    assert {"tfdisguise.models.block_layers", "tfdisguise.models.registry", "tfdisguise.mechanisms.layout"} <= seen


def test_the_weight_scan_finds_a_planted_key_matrix():
    # Positive control for `_assert_no_key_matrix_in_weights`: an adapter set to the exact inverse is caught.
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector", permute=False)
    model = models.build("block_adapter", (8, 8, 1), 2, adapt_data=pixels((8, 8, 1)), spec=key.spec, lr_multiplier=4.0)
    model.get_layer("block_adapter").assign_matrices(np.linalg.inv(key.plan.linear.matrices))
    with pytest.raises(AssertionError, match="block_adapter"):
        _assert_no_key_matrix_in_weights(model, key)


@pytest.mark.parametrize("mode", ["matrix", "vector"])
def test_block_normalization_commutes_with_an_orthogonal_disguise(rng, mode):
    key = make_key(image_shape=(8, 8, 2), block_size=4, rmt="orthogonal", rmt_mode=mode)
    x = rng.integers(0, 256, (256, 8, 8, 2)).astype("float32")
    x[:, :4, :4] *= 0.2  # blocks with different scales, so that a wrong permutation would show
    plain = models.build("block_vit", (8, 8, 2), 2, adapt_data=x, block_size=4, **TINY_VIT)
    disguised = models.build("block_vit", (8, 8, 2), 2, adapt_data=disguise(x, key), spec=key.spec, **TINY_VIT)

    def block_scales(model):
        variance = keras.ops.convert_to_numpy(model.get_layer("normalization").variance)[0]
        per_block = _blocks(variance, key.spec)
        assert np.allclose(per_block, per_block[:, :1])  # one scale per block position
        return per_block[:, 0]

    np.testing.assert_allclose(block_scales(disguised), block_scales(plain)[key.plan.linear.perm], rtol=1e-4)
    # The per-pixel normalization of other families has no such structure.
    cnn = models.build("simple_cnn", (8, 8, 2), 2, adapt_data=x)
    cnn_variance = _blocks(keras.ops.convert_to_numpy(cnn.get_layer("normalization").variance)[0], key.spec)
    assert not np.allclose(cnn_variance, cnn_variance[:, :1])


def _layers_under_test():
    from tfdisguise.models.block_layers import BlockAdapter, BlockTokens, PositionEmbedding, SoftBlockPermutation
    from tfdisguise.models.block_vit import ClassToken, FirstToken

    return [
        (BlockTokens(2, 5, use_bias=True), (3, 4, 4, 2)),
        (PositionEmbedding(), (3, 4, 5)),
        (BlockAdapter(2, structure="vector", channels=3, lr_multiplier=7.0, smoothness=0.5), (3, 4, 4, 2)),
        (BlockAdapter((2, 4), structure="matrix"), (3, 4, 8, 1)),
        (SoftBlockPermutation(2, iterations=5, temperature=0.5, init_scale=2.0, lr_multiplier=3.0), (3, 4, 4, 2)),
        (ClassToken(), (3, 4, 5)),
        (FirstToken(), (3, 4, 5)),
    ]


@pytest.mark.parametrize("index", range(7))
def test_block_layer_config_round_trip_and_tf_data(rng, index):
    layer, shape = _layers_under_test()[index]
    x = rng.normal(0, 1, shape).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    assert tuple(layer.compute_output_shape((None, *shape[1:])))[1:] == out.shape[1:]
    for w in layer.weights:  # non-trivial weights, so that a mix-up between them would show
        w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
    out = keras.ops.convert_to_numpy(layer(x))
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), out, atol=1e-6)
    mapped = tf.data.Dataset.from_tensor_slices(x).batch(3).map(lambda batch: layer(batch))
    np.testing.assert_allclose(next(iter(mapped)).numpy(), out, atol=1e-5)


def test_soft_permutation_and_smoothness(rng):
    from tfdisguise.models.block_layers import BlockAdapter, SoftBlockPermutation

    x = rng.normal(0, 1, (2, 4, 4, 1)).astype("float32")
    layer = SoftBlockPermutation(2)
    layer(x)
    s = keras.ops.convert_to_numpy(layer.matrix)
    np.testing.assert_allclose(s.sum(0), 1, atol=1e-4)
    np.testing.assert_allclose(s.sum(1), 1, atol=1e-4)
    assert np.all(np.diag(s) > 0.5)  # identity-leaning start
    layer.assign_permutation([2, 0, 3, 1])
    blocks = _blocks(x[0], layer.geometry)
    out = _blocks(keras.ops.convert_to_numpy(layer(x))[0], layer.geometry)
    np.testing.assert_allclose(out, blocks[[2, 0, 3, 1]], atol=1e-5)

    smooth = BlockAdapter(2, smoothness=2.0)
    smooth(x)
    dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
    assert len(smooth.losses) == 1
    np.testing.assert_allclose(float(smooth.losses[0]), 2.0 * (np.mean(dy ** 2) + np.mean(dx ** 2)), rtol=1e-5)
    plain = BlockAdapter(2)
    plain(x)
    assert plain.losses == []
    for bad, match in [({"structure": "diagonal"}, "`structure` must be one of"),
                       ({"structure": "matrix", "channels": 3}, "`channels` needs structure='vector'"),
                       ({"lr_multiplier": 0}, "`lr_multiplier` must be > 0"), ({"smoothness": -1}, "`smoothness`")]:
        with pytest.raises(ValueError, match=match):
            BlockAdapter(2, **bad)
