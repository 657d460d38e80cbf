import json
import os

import keras
import numpy as np
import pytest
from helpers import make_key
from reference import split_blocks

from tfdisguise import disguise
from tfdisguise.privacy import (
    attack_success,
    block_norm_thumbnails,
    class_membership_test,
    fano_factor,
    fit_block_linear,
    misusability,
    visual_privacy,
)
from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, size=(80, 8, 8, 1), dtype=np.uint8)


def test_known_plaintext_recovers_vector_rmt_and_permutation_exactly(images):
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="projection", rmt_mode="vector", permute=True)
    d = key.spec.block_dim
    est = fit_block_linear(images[:d], disguise(images[:d], key), key.spec)  # exactly d pairs
    true = key.plan.linear
    np.testing.assert_array_equal(est.perm, true.perm)
    err = np.linalg.norm(est.matrices - true.matrices) / np.linalg.norm(true.matrices)
    assert err < 1e-3


def test_known_plaintext_recovers_matrix_mode_from_one_image(images):
    # matrix mode acts on rows, so one image gives bh*C samples of each bw x bw R_i
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="matrix", permute=True)
    est = fit_block_linear(images[:2], disguise(images[:2], key), key.spec)
    perm, small = key.materials[1], key.materials[0]
    np.testing.assert_array_equal(est.perm, perm)
    for j, i in enumerate(perm):
        np.testing.assert_allclose(est.matrices[j], small[i], atol=1e-3)
    np.testing.assert_allclose(est.reconstruct(disguise(images[40:45], key)), images[40:45], atol=0.05)


def test_known_plaintext_degrades_as_noise_grows(images):
    errors = []
    for noise in (0, 20, 80):
        key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector", noise=noise)
        est = fit_block_linear(images[:40], disguise(images[:40], key), key.spec)
        errors.append(np.abs(est.reconstruct(disguise(images[40:], key)) - images[40:]).mean())
    assert errors[0] < 0.05 < errors[1] < errors[2]


def test_block_norm_thumbnail_equals_true_block_norms(images):
    key = make_key(image_shape=(8, 8, 1), block_size=2, rmt="orthogonal", rmt_mode="vector", permute=False)
    thumbs = block_norm_thumbnails(disguise(images[:5], key), key.spec)
    assert thumbs.shape == (5, 4, 4)
    for x, thumb in zip(images[:5], thumbs):
        true = [np.linalg.norm(b.astype(np.float64)) for b in split_blocks(x, 2, 2)]
        np.testing.assert_allclose(thumb.reshape(-1), true, rtol=1e-5)


def brightness_model():
    """Predicts class 1 when the mean pixel is above 128, else class 0."""
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.layers[-1].set_weights([np.array([[-1.0, 1.0]]), np.array([128.0, -128.0])])
    return model


def test_visual_privacy_and_misusability_on_constructed_models():
    bright, dark = np.full((10, 8, 8, 1), 200.0), np.full((10, 8, 8, 1), 50.0)
    x = np.concatenate([bright, dark])
    y = np.array([1] * 10 + [0] * 10)
    examiner = brightness_model()
    assert visual_privacy(examiner, x, y) == 0.0  # the examiner reads these images perfectly
    assert visual_privacy(examiner, 255 - x, y) == 1.0  # an inverting "disguise" fools it fully
    half = np.concatenate([bright[:5], dark[:5], bright[5:], dark[5:]])
    assert visual_privacy(examiner, half, y) == 0.5
    assert misusability(examiner, x, y) == 1.0 and misusability(examiner, 255 - x, y) == 0.0


def test_fano_factor_and_membership_test_known_values():
    assert fano_factor([5, 5, 5, 5]) == 0.0
    assert fano_factor([8, 0, 0, 0]) == pytest.approx(8.0)  # mean 2, sample variance 16
    assert fano_factor([3, 1, 3, 1]) == pytest.approx((4 / 3) / 2)
    flat = np.repeat(np.arange(10), 30)
    peaked = np.array([3] * 290 + list(range(10)))
    result = class_membership_test(peaked, flat, num_classes=10)
    assert result.out_fano == 0.0 and result.out_p_value == pytest.approx(1.0)
    assert result.in_fano > 100 and result.in_p_value < 1e-6
    assert result.in_histogram[3] == 291
    json.loads(result.to_json())
    with pytest.raises(ValueError, match="needs >= 2 bins"):
        fano_factor([0, 0])


def test_attack_success_is_a_ratio():
    assert attack_success(0.45, 0.9) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        attack_success(0.5, 0.0)


def synthetic_classes(rng, n=240):
    """Two classes a CNN can tell apart: bright left half or bright right half."""
    y = np.arange(n) % 2
    x = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.int64)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    return x.astype(np.uint8), y


def test_calibration_two_settings_end_to_end_and_resume(rng, tmp_path):
    x, y = synthetic_classes(rng)
    src = str(tmp_path / "data.npz")
    np.savez(src, x=x, y=y)
    out = str(tmp_path / "report")
    config = CalibrationConfig(source=src, out=out, block_sizes=(4,), noise_levels=(0.0, 30.0), rmt_modes=("vector",),
                               epochs=1, batch_size=32, ks=(1, 10), attack_images=40, key_agnostic_keys=2)
    messages = []
    report = calibrate(config, log=messages.append)
    names = [r["setting"] for r in report["settings"]]
    assert names == ["b4x4-n0-orthogonal-vector-perm", "b4x4-n30-orthogonal-vector-perm"]
    for r in report["settings"]:
        for field in ("disguised_accuracy", "visual_privacy", "misusability"):
            assert 0.0 <= r[field] <= 1.0
        attacks = r["attacks"]
        assert list(attacks)[:3] == ["known_plaintext", "block_norm", "key_agnostic"]  # all registered, in order
        assert set(attacks["known_plaintext"]["by_k"]) == {"1", "10"}
        assert 0.0 <= attacks["key_agnostic"]["accuracy"] <= 1.0
        for result in attacks.values():
            assert 0.0 <= result["success"] <= 1.0 and result["headline"]
    files = set(os.listdir(out))
    assert {"report.json", "report.md", "tradeoff.png", "kpa_curve.png", "baseline.json"} <= files
    assert {f"samples_{n}.png" for n in names} <= files
    with open(os.path.join(out, "report.md")) as f:
        table = f.read()
    assert all(f"| {n} |" in table for n in names)
    assert all(title in table for title in ("KPA success k=10", "block-norm examiner accuracy",
                                            "key-agnostic examiner accuracy"))
    with open(os.path.join(out, "report.json")) as f:
        assert "secret" not in f.read()

    # Resume: finished settings are skipped; a missing one is redone.
    first = os.path.join(out, "results", names[0] + ".json")
    second = os.path.join(out, "results", names[1] + ".json")
    before = os.stat(first).st_mtime_ns
    os.remove(second)
    messages.clear()
    calibrate(CalibrationConfig(**{**config.__dict__, "resume": True}), log=messages.append)
    assert os.stat(first).st_mtime_ns == before
    assert any("skipped (resume)" in m and names[0] in m for m in messages)
    assert not any("skipped" in m and names[1] in m for m in messages) and os.path.exists(second)
    assert any("resume: plain baseline" in m for m in messages)

    # A changed recipe is not silently mixed with old results.
    messages.clear()
    calibrate(CalibrationConfig(**{**config.__dict__, "resume": True, "ks": (1, 5)}), log=messages.append)
    assert any("recipe changed" in m for m in messages) and not any("skipped" in m for m in messages)
    with open(first) as f:
        assert set(json.load(f)["attacks"]["known_plaintext"]["by_k"]) == {"1", "5"}
