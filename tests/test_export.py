import functools
import os
import types
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import Disguise
from tfdisguise.export import ExportError, export


def test_a_disguise_layer_nested_in_a_submodel_is_found(tmp_path):
    key = make_key(image_shape=(8, 8, 1), block_size=4)
    inner = keras.Sequential([keras.Input((8, 8, 1)), Disguise(key), keras.layers.Flatten()])
    model = keras.Sequential([keras.Input((8, 8, 1)), inner, keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ExportError, match="contains a Disguise layer"):
        export(model, str(tmp_path), "nested", key=key)
    assert not (tmp_path / "nested" / "1").exists()


def test_key_and_identity_must_agree(tmp_path):
    key = make_key(image_shape=(8, 8, 1), block_size=4)
    other = make_key(seed=3, image_shape=(8, 8, 1), block_size=4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ExportError, match="disagree"):
        export(model, str(tmp_path), "m", key=key, identity=other.identity)


def _trained_run(tmp_path, key):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "model.keras"))
    key.identity.save(str(run))
    return run


def test_export_refuses_a_key_other_than_the_one_the_model_was_trained_with(tmp_path):
    from tfdisguise.export import export_trained

    key = make_key(image_shape=(8, 8, 1), block_size=4)
    other = make_key(seed=9, image_shape=(8, 8, 1), block_size=4)
    run = _trained_run(tmp_path, key)
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(ExportError, match=f"key {other.fingerprint}.*trained under key {key.fingerprint}"):
        export_trained(str(run / "model.keras"), str(tmp_path / "sm"), "m", key_path=str(tmp_path / "other.json"))
    assert not (tmp_path / "sm" / "m" / "1").exists()
    key.save(str(tmp_path / "key.json"))
    path = export_trained(str(run / "model.keras"), str(tmp_path / "sm"), "m", key_path=str(tmp_path / "key.json"))
    from tfdisguise.export import read_export_info

    assert read_export_info(path)["fingerprint"] == key.fingerprint


# ---- key material, however the model carries it ----------------------------------------------
# Each case is one an audit exported before: the layer-type check could not see it.


def _leaky_key():
    # Vector-mode RMT: its matrices are long enough to be recognised by content.
    return make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")


def _classifier(inputs, x):
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "m").exists(), os.listdir(tmp_path / "m")
    assert os.listdir(tmp_path) == []


def _disguise_with(t, *, key):
    return Disguise(key)(t)


@pytest.mark.parametrize("wrapping", ["closure", "tf.function", "object attribute", "partial with a Key", "plan"])
def test_a_disguise_layer_called_inside_a_lambda_is_refused(tmp_path, wrapping):
    """The layer walk follows what a Lambda's function captures, however it is wrapped.

    Mutations tried: `_children` not looking into functions (then only the content scan refuses, with another
    message); not following `tf.function`; not opening the user's own objects; `_key_holders` without `Plan`."""
    import tfdisguise

    key = _leaky_key()
    layer = Disguise(key)
    holder = types.SimpleNamespace(layer=layer)
    plan = key.plan
    function = {
        "closure": lambda t: layer(t),
        "tf.function": tf.function(lambda t: layer(t)),
        "object attribute": lambda t: holder.layer(t),
        "partial with a Key": functools.partial(_disguise_with, key=key),
        "plan": lambda t: tfdisguise.mechanisms.apply(t, plan),
    }[wrapping]
    inputs = keras.Input((8, 8, 1))
    model = _classifier(inputs, keras.layers.Lambda(function, output_shape=(8, 8, 1), name="wrapped")(inputs))
    holds = {"partial with a Key": "a tfdisguise Key", "plan": "a disguise Plan"}.get(wrapping, "a Disguise layer")
    with pytest.raises(ExportError, match=rf"contains {holds} \(layer 'wrapped' \(Lambda\)"):
        export(model, str(tmp_path), "m", key=key)
    _assert_nothing_written(tmp_path)
    # Without the key at hand the layer check alone refuses it.
    with pytest.raises(ExportError, match=f"contains {holds}"):
        export(model, str(tmp_path), "m", identity=key.identity)
    _assert_nothing_written(tmp_path)


def test_a_disguise_layer_hidden_from_the_layer_check_is_found_in_the_written_files(tmp_path):
    """The content scan is the backstop: here the layer sits behind a weak reference, which the walk does not follow.

    Mutations tried: no content scan in `export`; the scan run after the rename (the version stays behind);
    the failed export's new model directory left in place."""
    key = _leaky_key()
    layer = Disguise(key)
    hidden = weakref.ref(layer)
    inputs = keras.Input((8, 8, 1))
    model = _classifier(inputs, keras.layers.Lambda(lambda t: hidden()(t))(inputs))
    with pytest.raises(ExportError, match=r"holds key material \(saved_model.pb: .*matrices"):
        export(model, str(tmp_path), "m", key=key)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("what", ["secret", "matrices"])
def test_key_material_as_a_constant_in_a_lambda_is_refused(tmp_path, what):
    """Mutations tried: no content scan in `export`; the scan run after the rename; the failed export's new
    model directory left in place."""
    key = _leaky_key()
    constant = (np.frombuffer(key.secret_bytes(), np.uint8) if what == "secret"
                else key.materials[0].astype(np.float32))
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t + 0.0 * keras.ops.mean(keras.ops.cast(constant, "float32")))(inputs)
    with pytest.raises(ExportError, match="holds key material"):
        export(_classifier(inputs, x), str(tmp_path), "m", key=key)
    _assert_nothing_written(tmp_path)


def test_the_secret_as_a_float_weight_is_refused(tmp_path):
    """Mutations tried: the scanner without the secret as int/float arrays (the float32 weight is not found);
    no content scan; the failed export's new model directory left in place."""
    key = _leaky_key()
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(32)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden(keras.layers.Flatten()(inputs))))
    hidden.bias.assign(np.frombuffer(key.secret_bytes(), np.uint8).astype(np.float32))
    with pytest.raises(ExportError, match=r"variables/variables.data.*: the secret as a float32 array"):
        export(model, str(tmp_path), "m", key=key)
    _assert_nothing_written(tmp_path)


def test_the_cli_scans_with_the_key_it_is_given(tmp_path, capsys):
    """`tfdisguise export --key` hands the key to the scan; a normal model still exports.

    Mutations tried: `export_trained` passing only the key's identity (the leaking model is exported)."""
    from tfdisguise import cli

    key = _leaky_key()
    key.save(str(tmp_path / "key.json"))
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(32)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden(keras.layers.Flatten()(inputs))))
    model.save(str(tmp_path / "clean.keras"))
    hidden.bias.assign(np.frombuffer(key.secret_bytes(), np.uint8).astype(np.float32))
    model.save(str(tmp_path / "leaky.keras"))
    base = tmp_path / "saved_models"
    args = ["export", "--base", str(base), "--name", "m", "--key", str(tmp_path / "key.json"), "--model"]
    assert cli.main(args + [str(tmp_path / "leaky.keras")]) != 0
    assert "holds key material" in capsys.readouterr().err
    assert not (base / "m").exists()
    assert cli.main(args + [str(tmp_path / "clean.keras")]) == 0
    assert sorted(os.listdir(base / "m")) == ["1"]
    assert (base / "m" / "1" / "saved_model.pb").is_file()
