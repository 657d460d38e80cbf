"""A mechanism defined outside the package, registered with `register_step`, works everywhere.

Two toy steps live in this file and nowhere else:
- `ToyNegPos`: a keyed negative-positive transform (each block is kept or becomes
  level - block), an affine block op with a bias that fuses with RMT and permutation;
- `ToyXor`: a keyed byte-wise XOR, which `keras.ops` cannot express on float
  pixels, so it takes the numpy escape hatch.
"""

import dataclasses
import json
from typing import ClassVar

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdisguise import Disguise, Key, Spec, disguise, export_disguised, load_disguised, undisguise, wrap
from tfdisguise.mechanisms import BlockLinear, Op, apply
from tfdisguise.mechanisms.reference import disguise_batch, join_blocks, split_blocks
from tfdisguise.spec import RMT, Permute, Step, register_step, registered_steps


@register_step
@dataclasses.dataclass(frozen=True)
class ToyNegPos(Step):
    name: ClassVar[str] = "toy_negpos"
    level: float = 255.0

    def material(self, rng, spec):
        return rng.integers(0, 2, spec.num_blocks).astype(bool)

    def build(self, flip, spec):
        sign = np.where(flip, -1.0, 1.0)[:, None] * np.ones(spec.block_dim)
        return BlockLinear(matrices=sign[:, :, None] * np.eye(spec.block_dim), bias=self.level * (sign < 0))

    def reference(self, image, flip, spec, rng):
        blocks = split_blocks(image, *spec.block_size)
        return join_blocks([self.level - b if f else b for b, f in zip(blocks, flip)], spec)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class XorOp(Op):
    mask: np.ndarray  # [t, d] uint8

    layout: ClassVar[str] = "blocks"
    backend: ClassVar[str] = "numpy"

    def __call__(self, blocks, uniform=None, dtype="float32"):
        pixels = np.clip(np.rint(blocks), 0, 255).astype(np.uint8)
        return (pixels ^ self.mask[:, None, :]).astype(dtype)

    def inverse(self):
        return self


@register_step
@dataclasses.dataclass(frozen=True)
class ToyXor(Step):
    name: ClassVar[str] = "toy_xor"
    linear: ClassVar[bool] = False

    def material(self, rng, spec):
        return rng.integers(0, 256, (spec.num_blocks, spec.block_dim), dtype=np.uint8)

    def build(self, mask, spec):
        return XorOp(mask)

    def reference(self, image, mask, spec, rng):
        blocks = split_blocks(image.astype(np.uint8), *spec.block_size)
        return join_blocks([(b.reshape(-1) ^ m).reshape(b.shape).astype(np.float64) for b, m in zip(blocks, mask)],
                           spec)


SHAPE = (8, 8, 1)


def make_key(*steps, seed=0):
    return Key(np.random.default_rng(seed).bytes(32), Spec(SHAPE, 4, steps=steps))


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, size=(5,) + SHAPE, dtype=np.uint8)


@pytest.fixture
def key():
    return make_key(RMT("orthogonal", "vector"), ToyNegPos(level=255.0), Permute())


@pytest.fixture
def xor_key():
    return make_key(ToyXor(), Permute())


def test_spec_json_round_trip_and_description(key):
    spec = key.spec
    assert registered_steps()["toy_negpos"] is ToyNegPos
    text = json.dumps(spec.to_dict())
    assert Spec.from_dict(json.loads(text)) == spec
    assert spec.describe() == "block 4x4: rmt(orthogonal,vector) > toy_negpos(255) > permute"
    assert spec.is_linear and spec.is_noise_free and spec.has("toy_negpos") and spec.has(ToyNegPos)


def test_key_file_round_trip(key, images, tmp_path):
    path = str(tmp_path / "key.json")
    key.save(path)
    loaded = Key.load(path)
    assert loaded == key and loaded.spec.steps[1] == ToyNegPos(255.0)
    np.testing.assert_array_equal(loaded.materials[1], key.materials[1])
    np.testing.assert_array_equal(disguise(images, loaded), disguise(images, key))


def test_linear_toy_fuses_matches_reference_and_inverts_exactly(key, images):
    assert len(key.plan.ops) == 1 and key.plan.exact_inverse
    flip = key.materials[1]
    assert flip.any() and not flip.all()  # this secret flips some blocks, not all
    y = disguise(images, key)
    np.testing.assert_allclose(y, disguise_batch(images, key.spec, key.materials), atol=1e-3)
    np.testing.assert_allclose(undisguise(y, key), images, atol=1e-3)


def test_wrap(key, images):
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5))).batch(3)
    xs = np.concatenate([x.numpy() for x, _ in wrap(ds, key)])
    np.testing.assert_allclose(xs, disguise(images, key), atol=1e-3)


def test_disguise_layer_and_keras_file(key, images, tmp_path):
    model = keras.Sequential([keras.Input(SHAPE), Disguise(key)])
    np.testing.assert_allclose(model.predict(images, verbose=0), disguise(images, key), atol=1e-3)
    path = str(tmp_path / "owner.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].key == key and loaded.layers[0].spec == key.spec
    np.testing.assert_allclose(loaded.predict(images, verbose=0), disguise(images, key), atol=1e-3)


def test_shards_round_trip(key, images, tmp_path):
    out = str(tmp_path / "upload")
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5) % 2))
    manifest = export_disguised(ds, key, out, shard_size=3, progress=False)
    assert manifest["spec"] == key.spec.to_dict()
    shards, labels = next(iter(load_disguised(out, key=key).batch(5)))
    np.testing.assert_array_equal(labels.numpy(), np.arange(5) % 2)
    np.testing.assert_allclose(shards.numpy(), disguise(images, key), atol=1e-3)
    np.testing.assert_allclose(undisguise(shards.numpy(), key), images, atol=1e-3)


def test_numpy_step_through_disguise_and_undisguise(xor_key, images):
    assert not xor_key.spec.is_linear and xor_key.plan.runs_numpy and xor_key.plan.exact_inverse
    y = disguise(images, xor_key)
    np.testing.assert_array_equal(y, disguise_batch(images, xor_key.spec, xor_key.materials))
    assert not np.array_equal(y, images)
    np.testing.assert_array_equal(undisguise(y, xor_key), images)


def test_numpy_step_through_wrap_and_the_layer(xor_key, images):
    want = disguise(images, xor_key)
    wrapped = wrap(tf.data.Dataset.from_tensor_slices(images).batch(2), xor_key)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x in wrapped]), want)
    model = keras.Sequential([keras.Input(SHAPE), Disguise(xor_key)])
    # XLA cannot compile tf.numpy_function: the layer says so, and Keras turns jit_compile off.
    with pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):
        model.compile(loss="mse", jit_compile=True)
    assert not model.jit_compile
    np.testing.assert_array_equal(model.predict(images, verbose=0), want)
    assert Disguise(make_key(Permute())).supports_jit


def test_numpy_step_in_a_compiled_function_on_another_backend_is_a_clear_error(xor_key, images, monkeypatch):
    # Stands in for JAX's jit: another backend, inside a traced function, where numpy cannot run.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="runs in numpy .* cannot run inside a compiled jax function"):
        tf.function(lambda x: apply(x, xor_key.plan))(tf.constant(images))


def test_register_step_refuses_bad_classes():
    with pytest.raises(TypeError, match="subclasses of tfdisguise.spec.Step"):
        register_step(int)

    with pytest.raises(ValueError, match="must set `name"):

        @register_step
        @dataclasses.dataclass(frozen=True)
        class Nameless(Step):
            pass

    with pytest.raises(TypeError, match="must be a frozen dataclass"):

        @register_step
        class NotADataclass(Step):
            name: ClassVar[str] = "toy_not_a_dataclass"

    with pytest.raises(ValueError, match="'toy_negpos' is already registered by .*test_register_step.ToyNegPos"):

        @register_step
        @dataclasses.dataclass(frozen=True)
        class Impostor(Step):
            name: ClassVar[str] = "toy_negpos"

    assert registered_steps()["toy_negpos"] is ToyNegPos
    assert "toy_not_a_dataclass" not in registered_steps()


def test_unknown_step_names_the_fix():
    with pytest.raises(ValueError, match="Unknown step 'toy_missing'.*@register_step.*imported"):
        Spec.from_dict({"image_shape": list(SHAPE), "block_size": [4, 4], "steps": [{"name": "toy_missing"}]})


def test_a_registered_step_is_calibrated_like_a_built_in_one(tmp_path):
    from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (80, *SHAPE), dtype=np.uint8)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    spec = Spec(SHAPE, 4, steps=(ToyNegPos(), Permute()))
    config = CalibrationConfig(source=str(tmp_path / "toy.npz"), out=str(tmp_path / "report"), epochs=1,
                               batch_size=16, ks=(1, 4), attack_images=8, key_agnostic=False,
                               specs={"toy-negpos-perm": spec})
    report = calibrate(config, log=lambda message: None)
    (row,) = report["settings"]
    assert row["setting"] == "toy-negpos-perm" and Spec.from_dict(row["spec"]) == spec
    assert 0.0 <= row["disguised_accuracy"] <= 1.0
    assert "known_plaintext" in row["attacks"]
    with open(tmp_path / "report" / "report.md") as f:
        assert "toy-negpos-perm" in f.read()
