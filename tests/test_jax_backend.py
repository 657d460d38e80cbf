"""The JAX backend: the Disguise layer and every registered model run under KERAS_BACKEND=jax, without TensorFlow.

Keras fixes its backend at import, so the JAX side runs in a subprocess; it loads the same key file the test
process wrote and returns its outputs, which are compared here with the TensorFlow backend's.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfdisguise
from tfdisguise import Key, Spec

JAX_SIDE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import tfdisguise
    from tfdisguise import Disguise, Key, models

    args = json.loads(sys.argv[1])
    x = np.load(args["x"])
    out = {"backend": keras.backend.backend()}
    exact = Disguise(Key.load(args["exact_key"]))
    out["exact"] = np.asarray(exact(x)).tolist()
    noisy = Disguise(Key.load(args["noisy_key"]))
    repeated = np.repeat(x[:1], args["draws"], axis=0)
    draws = np.asarray(noisy(repeated))
    out["noisy_mean"], out["noisy_sd"] = draws.mean(0).tolist(), draws.std(0).tolist()
    # Every registered model builds, runs and takes a training step on disguised images; the owner-side
    # GPU path (the layer inside the model) trains too.
    y = np.arange(len(x)) % 10
    disguised = np.asarray(exact(x), "float32")
    out["models"] = {}
    for name in [n for n in models.MODEL_NAMES if "<" not in n and n != "keras.applications"]:
        model = models.build(name, x.shape[1:], 10, adapt_data=disguised, spec=exact.spec)
        model.compile("adam", "sparse_categorical_crossentropy")
        loss = model.fit(disguised, y, epochs=1, batch_size=len(x), verbose=0).history["loss"][-1]
        out["models"][name] = float(loss)
    owner = keras.Sequential([keras.Input(x.shape[1:]), noisy, keras.layers.Flatten(), keras.layers.Dense(10)])
    owner.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out["owner_loss"] = float(owner.fit(x, y, epochs=1, batch_size=len(x), verbose=0).history["loss"][-1])
    # Owner-side augmentation before the disguise keeps the whole model compiled (Keras marks its geometric
    # augmentations as not jittable, which would make every step eager).
    from tfdisguise.recipe import augmentation
    augmented = keras.Sequential([keras.Input(x.shape[1:]), augmentation("crop=0.125,flip"), noisy,
                                  keras.layers.Flatten(), keras.layers.Dense(10)])
    augmented.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out["augmented_jit"] = augmented.jit_compile
    out["augmented_loss"] = float(augmented.fit(x, y, epochs=1, batch_size=len(x), verbose=0).history["loss"][-1])
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jax")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
    np.save(tmp / "x.npy", x)
    exact = Key(rng.bytes(32), Spec.create((28, 28, 1), 7, rmt_mode="vector", noise=0))
    noisy = Key(rng.bytes(32), Spec.recommended((28, 28, 1)))
    exact.save(str(tmp / "exact.json"))
    noisy.save(str(tmp / "noisy.json"))
    args = {"x": str(tmp / "x.npy"), "exact_key": str(tmp / "exact.json"), "noisy_key": str(tmp / "noisy.json"),
            "draws": 2000}
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", JAX_SIDE, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return x, exact, noisy, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_layer_on_jax_equals_the_layer_on_tensorflow(jax_run):
    x, exact, _, out = jax_run
    assert out["backend"] == "jax" and out["tensorflow_imported"] is False
    on_tf = np.asarray(tfdisguise.Disguise(exact)(x))
    np.testing.assert_allclose(np.array(out["exact"]), on_tf, rtol=1e-5, atol=1e-3)


def test_noise_on_jax_has_the_distribution_it_has_on_tensorflow(jax_run):
    x, _, noisy, out = jax_run
    draws = 2000
    on_tf = np.asarray(tfdisguise.Disguise(noisy)(np.repeat(x[:1], draws, axis=0)))
    level = noisy.spec.noise_level  # U[0, N]: sd N / sqrt(12) per pixel
    sd = level / np.sqrt(12)
    mean_jax, sd_jax = np.array(out["noisy_mean"]), np.array(out["noisy_sd"])
    # Means agree to within 5 standard errors of a mean over `draws` draws, pixel by pixel.
    assert np.abs(mean_jax - on_tf.mean(0)).max() < 5 * sd * np.sqrt(2 / draws)
    np.testing.assert_allclose(sd_jax, sd, rtol=0.1)
    np.testing.assert_allclose(on_tf.std(0), sd, rtol=0.1)


def test_every_model_trains_on_jax(jax_run):
    out = jax_run[3]
    assert set(out["models"]) == {"simple_cnn", "resnet20", "block_vit", "block_adapter"}
    assert all(np.isfinite(v) for v in out["models"].values()) and np.isfinite(out["owner_loss"])


def test_owner_side_augmentation_keeps_the_model_compiled_on_jax(jax_run):
    out = jax_run[3]
    assert out["augmented_jit"] is True
    assert np.isfinite(out["augmented_loss"])


def test_the_gpu_script_trains_plain_and_disguised_under_data_parallel(tmp_path):
    """benchmarks/model_gap_jax.py, the device run, at toy size on two host devices (keras.distribution)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8),
             y=np.arange(160) % 10)
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "model_gap_jax.py")
    out = tmp_path / "out"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = ["--data", str(tmp_path / "data.npz"), "--parts", "plain,cifar-perm", "--model", "simple_cnn",
            "--epochs", "2", "--batch-size", "32", "--parallel", "2", "--data-parallel", "--out", str(out)]
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # --model names the rows, so that runs of another model never pool with the default's.
    perm, plain = "cifar-perm [resnet20+aug, simple_cnn]", "plain [resnet20+aug, simple_cnn]"
    assert sorted(r["part"] for r in results) == [perm, plain]
    assert all(r["data_parallel_devices"] == 2 and r["epochs_run"] == 2 for r in results)
    assert all(r["train_images"] == 128 and r["val_images"] == 32 for r in results)
    assert next(r for r in results if r["part"] == perm)["spec"].startswith("block 2x2: rmt(orthogonal")
    epochs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted((e["part"], e["epoch"]) for e in epochs) == [(perm, 1), (perm, 2), (plain, 1), (plain, 2)]
    done = subprocess.run([sys.executable, script, "--summarize", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"| {perm} |" in (out / "summary.md").read_text() and (out / "curves.png").stat().st_size > 1000
