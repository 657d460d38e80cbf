import keras
import pytest
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
