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
