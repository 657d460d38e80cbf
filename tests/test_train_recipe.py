"""The TrainConfig options that apply to plain and disguised training alike."""

import keras
import numpy as np
import pytest
from helpers import make_key

from tfdisguise.train import TrainConfig, augmentation, train_classifier


def _data(rng, n=64):
    x = rng.integers(0, 256, (n, 14, 14, 1), dtype=np.uint8)
    return x, np.arange(n) % 2


def test_defaults_are_unchanged():
    config = TrainConfig()
    assert (config.model, config.epochs, config.batch_size, config.learning_rate) == ("simple_cnn", 10, 128, 1e-3)
    assert (config.model_options, config.label_smoothing, config.augment, config.weight_decay,
            config.warmup_epochs) == ({}, 0.0, None, 0.0, 0.0)


@pytest.mark.parametrize("keyed", [False, True])
def test_every_option_trains_plain_and_disguised(rng, keyed):
    x, y = _data(rng)
    key = make_key(image_shape=(14, 14, 1), block_size=7, noise=20) if keyed else None
    # Plain data has no spec to take the block size from, so the block model is told it.
    options = {"dim": 8, "depth": 1, "heads": 2, **({} if keyed else {"block_size": 7})}
    config = TrainConfig(model="block_vit", epochs=2, batch_size=16, model_options=options,
                         label_smoothing=0.1, augment="translate=0.1,rotate=0.05", weight_decay=1e-4,
                         warmup_epochs=1)
    model, result = train_classifier(x, y, (x[:16], y[:16]), key=key, config=config, progress=False)
    assert model.name == "block_vit" and model.get_layer("block_tokens").units == 8
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.loss.label_smoothing == 0.1
    assert len(result.history["val_accuracy"]) == 2 and 0 <= result.val_accuracy <= 1


def test_warmup_then_cosine_decay():
    from tfdisguise import models
    from tfdisguise.recipe import compile_model

    model = models.build("simple_cnn", (8, 8, 1), 2, adapt_data=np.zeros((2, 8, 8, 1), "float32"))
    compile_model(model, TrainConfig(epochs=4, warmup_epochs=1, learning_rate=1e-3), steps_per_epoch=10)
    rates = []
    for step in (0, 5, 10, 25, 40):
        model.optimizer.iterations.assign(step)
        rates.append(float(model.optimizer.learning_rate))
    np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_augmentation_recipes():
    layer = augmentation("translate=0.1, rotate=0.05, zoom=0.1, flip, crop=0.125")
    assert [type(v).__name__ for v in layer.layers] == ["RandomTranslation", "RandomRotation", "RandomZoom",
                                                        "RandomFlip", "RandomTranslation"]
    images = np.zeros((16, 8, 8, 1), "float32")
    images[:, 2:6, 2:6] = 255
    shifted = keras.ops.convert_to_numpy(augmentation("translate=0.4")(images, training=True))
    assert np.abs(shifted - images).max() > 10
    np.testing.assert_allclose(shifted.sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3)), rtol=0.6)
    for bad, match in [("blur=0.1", "terms must be among"), ("translate", r"fraction in \(0, 1\)"),
                       ("translate=x", "needs a number"), ("", "at least one term")]:
        with pytest.raises(ValueError, match=match):
            augmentation(bad)
    with pytest.raises(ValueError, match="`augment` terms"):
        TrainConfig(augment="blur=0.1")
    for kwargs, match in [({"label_smoothing": 1.0}, "label_smoothing"), ({"weight_decay": -1}, "weight_decay"),
                          ({"warmup_epochs": 10}, "warmup_epochs")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)
