"""benchmarks/model_gap.py end to end on a tiny CIFAR-shaped file (one epoch, one key)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark(name="model_gap"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_gap_runs_plain_once_and_summarizes(rng, tmp_path):
    os.makedirs(tmp_path / "data" / "cifar10")
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "data" / "cifar10" / "train.npz", x=x, y=np.arange(40) % 10)
    bench = _load_benchmark()
    bench.RECIPES["cifar10"]["tiny"] = {"model": "block_vit", "model_options": {"dim": 8, "depth": 1, "heads": 2,
                                                                                  "block_size": 8}}
    for name, permute in (("tiny-a", False), ("tiny-b", True)):
        bench.PARTS[name] = {"data": "cifar10", "spec": {"block_size": 8, "permute": permute, "noise": 25}}
    out = str(tmp_path / "out")
    argv = ["--data", str(tmp_path / "data"), "--parts", "tiny-a,tiny-b", "--recipes", "tiny",
            "--epochs", "1", "--keys", "1", "--batch-size", "16", "--out", out, "--resume"]
    summary = bench.main(argv)
    with open(os.path.join(out, "results.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # One plain run serves both parts; one disguised run per part.
    assert sorted((r["part"], r["side"]) for r in records) == [("cifar10", "plain"), ("tiny-a", "disguised"),
                                                               ("tiny-b", "disguised")]
    assert {r["fingerprint"] is None for r in records if r["side"] == "plain"} == {True}
    assert summary["tiny-a"]["best_plain"] == "tiny"
    assert set(os.listdir(out)) >= {"summary.md", "summary.json", "curves_tiny-a.png", "curves_tiny-b.png"}
    # --resume skips what is done.
    bench.main(argv)
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len(f.readlines()) == 3
    # A second seed of the plain reference alone.
    bench.main([*argv[:argv.index("--keys")], "--keys", "2", *argv[argv.index("--keys") + 2:], "--no-disguised"])
    with open(os.path.join(out, "results.jsonl")) as f:
        added = [json.loads(line) for line in f][3:]
    assert [(r["side"], r["seed"]) for r in added] == [("plain", 1)]


def test_stem_diagnostics_see_an_adapter_that_holds_the_key(rng):
    from helpers import make_key
    from test_block_models import absorbing_copy

    from tfdisguise import disguise, models

    bench = _load_benchmark()
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="matrix")
    x = rng.integers(0, 256, (64, 8, 8, 1)).astype("float32")
    model = models.build("block_adapter", (8, 8, 1), 3, adapt_data=x, spec=key.spec, lr_multiplier=10.0)
    model.get_layer("block_permutation").assign_permutation(np.arange(key.spec.num_blocks))
    holds_key = bench.stem_diagnostics(absorbing_copy(model, key), key, x)
    assert holds_key["inversion_corr"] > 0.99 and holds_key["diag_share"] > 0.99 and holds_key["perm_mass"] > 0.99
    fresh = models.build("block_adapter", (8, 8, 1), 3, adapt_data=disguise(x, key), spec=key.spec)
    unaware = bench.stem_diagnostics(fresh, key, x)
    assert unaware["inversion_corr"] < 0.5 and unaware["diag_share"] < 0.9 and unaware["perm_mass"] < 0.5
    assert bench.stem_diagnostics(models.build("simple_cnn", (8, 8, 1), 3, adapt_data=x), key, x) == {}


def test_the_gpu_scripts_inverse_stem_undoes_a_disguise_the_spectral_attack_breaks(rng):
    """model_gap_jax.py --inverse-stem: fixed layers that map fresh disguised images back to the plain ones."""
    import keras
    from keyfree_data import fixed_key, structured

    from tfdisguise import Spec, disguise

    bench = _load_benchmark("model_gap_jax")
    spec = Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode="matrix", permute=True, noise=30)
    key = fixed_key(spec)
    (public, _), (owner, _), (victim, _) = structured(rng, 4000), structured(rng, 1500), structured(rng, 200)
    layers, adapt, placed = bench.inverse_stem(owner, public, key, seed=0)
    assert placed == 1.0 and adapt.shape == (1500, 8, 8, 1)
    stem = keras.Sequential([keras.Input((8, 8, 1)), *layers])
    assert stem.trainable_weights == []  # fixed: the classifier behind it trains, the inverse does not
    recovered = np.asarray(stem(disguise(victim, key)))
    # Measured 0.025: noise 30 (sd 8.7) is only partly removed. A wrong transform leaves errors of the images' own
    # spread (ratio about 1 or more).
    assert np.mean((recovered - victim) ** 2) < 0.1 * np.var(victim)


def test_the_gpu_scripts_public_images_are_held_out_of_every_training():
    """--inverse-stem: the attacker's public tail is disjoint from what any part (plain included) trains on."""
    import doctest

    from tfdisguise.datasets import ImageData

    bench = _load_benchmark("model_gap_jax")
    # The docstring's examples: pytest collects doctests from tfdisguise/ only, so they run here.
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(bench.owner_and_public, "owner_and_public", globs=dict(vars(bench))):
        runner.run(test)
    assert runner.summarize(verbose=False) == (0, 6)  # (failed, attempted)
    data = ImageData(np.arange(100).reshape(100, 1, 1, 1).astype("uint8"), np.arange(100) % 10)
    for limit in (None, 30, 95):
        owner, public = bench.owner_and_public(data, 20, limit)
        assert len(public) == 20 and len(owner) == min(limit or 80, 80)
        assert not set(owner.x.ravel()) & set(public.ravel())
    with pytest.raises(ValueError, match="--public-limit must be between 1 and 99; got 100"):
        bench.owner_and_public(data, 100, None)


def test_the_gpu_script_takes_model_gaps_recipes_by_name(tmp_path, capsys):
    """--recipe: model_gap.py's CIFAR-10 recipes (the block_adapter one with its ResNet-20 backbone), rows named
    apart from the default recipe's, and an unknown name refused before anything trains."""
    import doctest

    bench = _load_benchmark("model_gap_jax")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for function in (bench.recipe_fields, bench.row_name):
        for test in doctest.DocTestFinder().find(function, function.__name__, globs=dict(vars(bench))):
            runner.run(test)
    assert runner.summarize(verbose=False) == (0, 6)  # (failed, attempted)
    assert bench.recipe_fields("adapter+aug", None, 100)["model_options"]["lr_multiplier"] == 100
    backend = os.environ.get("KERAS_BACKEND")
    with pytest.raises(SystemExit):
        bench.main(["--data", str(tmp_path / "none.npz"), "--recipe", "adapter", "--out", str(tmp_path / "out")])
    assert "argument --recipe: invalid choice: 'adapter' (choose from" in capsys.readouterr().err
    # Refused before main() sets KERAS_BACKEND for its trainings: later tests' subprocesses must not inherit it.
    assert os.environ.get("KERAS_BACKEND") == backend


def test_the_device_data_pack_is_lossless_and_keeps_the_order(tmp_path, monkeypatch):
    """benchmarks/device/pack_cifar.py: what travels to the device unpacks to the first N images, bit for bit."""
    pack = _load_benchmark("device/pack_cifar")
    # Its process pool pickles `encode` by module name: the children (forked) find it in sys.modules.
    pack.__name__ = pack.encode.__module__ = pack.decode.__module__ = "pack_cifar"
    monkeypatch.setitem(sys.modules, "pack_cifar", pack)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), y=np.arange(12) % 10)
    assert pack.main(["pack", str(tmp_path / "train.npz"), "9", str(tmp_path / "packed.npz"), "--check"]) == 0
    assert pack.main(["unpack", str(tmp_path / "packed.npz"), str(tmp_path / "out.npz")]) == 0
    source, out = np.load(tmp_path / "train.npz"), np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["x"], source["x"][:9])
    np.testing.assert_array_equal(out["y"], source["y"][:9])


def test_the_key_free_inverse_undoes_block_scrambling_and_rmt_as_one_affine_map(rng):
    """tfdisguise.privacy.attacks.inverse_map: the fixed first layer of inverse_stem.py and model_gap_jax.py."""
    from keyfree_data import fixed_key, structured

    from tfdisguise import Spec, disguise
    from tfdisguise.privacy.attacks import true_permutation
    from tfdisguise.privacy.attacks.inverse_map import key_free_inverse

    assert {"mnist-scramble", "mnist-paper", "cifar-poster"} <= set(_load_benchmark("inverse_stem").INVERTIBLE_PARTS)
    (public, _), (owner, _) = structured(rng, 3000, (16, 16, 1)), structured(rng, 1000, (16, 16, 1))
    for spec in (Spec.create((16, 16, 1), 4, rmt=None, scramble="per_position", permute=True, noise=20),
                 Spec.create((16, 16, 1), 4, rmt="orthogonal", rmt_mode="matrix", permute=True, noise=20)):
        key = fixed_key(spec)
        uploaded = disguise(owner, key)
        g, c, perm = key_free_inverse(public, uploaded, spec, seed=0)
        assert np.array_equal(perm, true_permutation(key))
        recovered = uploaded.reshape(len(owner), -1) @ g + c
        # What is left is at most the noise (uniform 0..20: variance 33), against the images' own spread.
        assert np.mean((recovered - owner.reshape(len(owner), -1)) ** 2) < 0.1 * np.var(owner), spec.describe()
    with pytest.raises(ValueError, match="`denoise=False` applies to block scrambling"):
        key_free_inverse(public, uploaded, spec, denoise=False)
    aes = Spec.create((16, 16, 1), 4, rmt=None, aes=True, noise=0)
    with pytest.raises(ValueError, match=r"No key-free inverse for block 4x4: aes"):
        key_free_inverse(public, owner, aes)
    # Block scrambling with strong noise: inverting the transforms leaves all of the noise (variance 100^2/12 =
    # 833), and the LMMSE denoising removes about half of it here (measured 837 -> 435).
    spec = Spec.create((16, 16, 1), 4, rmt=None, scramble="per_position", permute=True, noise=100)
    uploaded, flat = disguise(owner, fixed_key(spec)).reshape(len(owner), -1), owner.reshape(len(owner), -1)
    errors = []
    for denoise in (False, True):
        g, c, _ = key_free_inverse(public, uploaded.reshape(owner.shape), spec, seed=0, denoise=denoise)
        errors.append(np.mean((uploaded @ g + c - flat) ** 2))
    assert 750 < errors[0] < 920 and errors[1] < 0.7 * errors[0], errors
