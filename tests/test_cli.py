import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tfdisguise import Key, Spec, cli, load_disguised


@pytest.fixture
def npz(rng, tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez(path, x=rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8), y=np.arange(12) % 3)
    return path


@pytest.fixture
def key_path(tmp_path):
    path = str(tmp_path / "key.json")
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--block-size", "4", "--rmt", "projection",
                     "--rmt-mode", "vector", "--no-permute", "--noise", "5", "--out", path]) == 0
    return path


def test_keygen_writes_private_key_with_spec(tmp_path, capsys):
    key_path = str(tmp_path / "k.json")
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--block-size", "4", "--rmt", "projection",
                     "--rmt-mode", "vector", "--no-permute", "--noise", "5", "--out", key_path]) == 0
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    key = Key.load(key_path)
    assert [s.name for s in key.spec.steps] == ["rmt", "noise"]
    assert key.spec.block_size == (4, 4) and key.spec.noise_level == 5
    assert key.fingerprint in capsys.readouterr().out


def test_keygen_errors(key_path, capsys):
    assert cli.main(["keygen", "--image-shape", "32,32,3", "--block-size", "7", "--out", key_path + "2"]) == 1
    # The library's message, in the flag the user typed.
    assert "`--block-size` (7, 7) must divide the image shape (32, 32, 3)" in capsys.readouterr().err
    assert not os.path.exists(key_path + "2")
    before = pathlib.Path(key_path).read_text()
    assert cli.main(["keygen", "--image-shape", "8,8,3", "--out", key_path]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert pathlib.Path(key_path).read_text() == before  # the existing key is not lost
    with pytest.raises(SystemExit):
        cli.main(["keygen", "--image-shape", "8,x,3", "--out", key_path])


def test_disguise_writes_shards(key_path, npz, tmp_path, capsys):
    out = str(tmp_path / "upload")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out, "--shard-size", "5", "--quiet"]) == 0
    assert "wrote 12 disguised images in 3 shard(s)" in capsys.readouterr().out
    assert sum(1 for _ in load_disguised(out, key=Key.load(key_path))) == 12


def test_disguise_copies_augment_and_float16(key_path, npz, tmp_path, capsys):
    key = Key.load(key_path)
    out32, out16 = str(tmp_path / "f32"), str(tmp_path / "f16")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out32, "--quiet"]) == 0
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out16, "--quiet", "--copies", "2",
                     "--augment", "flip", "--dtype", "float16"]) == 0
    assert "wrote 24 disguised images" in capsys.readouterr().out
    manifest = json.loads(pathlib.Path(out16, "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["copies"] == 2 and manifest["augmented"] is True
    images16 = np.stack([x.numpy() for x, _ in load_disguised(out16, key=key)])
    images32 = np.stack([x.numpy() for x, _ in load_disguised(out32, key=key)])
    assert images16.dtype == np.float32 and images16.shape == (24, 8, 8, 3)
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".tfrecord"))
    assert size(out16) < 0.65 * 2 * size(out32)  # half the bytes per value, plus the records' framing
    # The copies differ (fresh noise, a fresh flip) and sit on the same scale as the float32 export.
    assert not np.array_equal(images16[:12], images16[12:])
    assert abs(images16.std() - images32.std()) < 0.1 * images32.std()


def test_train_recipe_flags(key_path, npz, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--input", npz, "--key", key_path, "--epochs", "1", "--batch-size", "4",
                     "--model", "block_adapter", "--model-options", "lr_multiplier=10", "--augment", "flip",
                     "--label-smoothing", "0.1", "--out", out]) == 0
    history = json.loads(pathlib.Path(out, "history.json").read_text())
    assert history["config"]["augment"] == "flip" and history["config"]["model_options"] == {"lr_multiplier": 10}
    shards = str(tmp_path / "upload")
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", shards, "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--shards", shards, "--augment", "flip", "--out", str(tmp_path / "r2")]) == 1
    assert "`tfdisguise disguise --augment ... --copies K`" in capsys.readouterr().err


def test_disguise_errors(key_path, npz, tmp_path, capsys):
    out = str(tmp_path / "upload")
    os.chmod(key_path, 0o644)
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", out]) == 1
    assert "chmod 600" in capsys.readouterr().err
    os.chmod(key_path, 0o600)
    np.savez(tmp_path / "mnist.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    assert cli.main(["disguise", "--key", key_path, "--input", str(tmp_path / "mnist.npz"), "--out", out]) == 1
    assert "was made for images of shape (8, 8, 3)" in capsys.readouterr().err
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_preview_writes_png(key_path, npz, tmp_path):
    out = str(tmp_path / "grid.png")
    assert cli.main(["preview", "--key", key_path, "--input", npz, "--out", out, "--n", "4"]) == 0
    assert pathlib.Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_entry_point(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    out = str(tmp_path / "k.json")
    ok = subprocess.run([exe, "keygen", "--image-shape", "28,28,1", "--block-size", "7", "--noise", "100",
                         "--out", out], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(pathlib.Path(out).read_text())["spec"]["block_size"] == [7, 7]
    bad = subprocess.run([exe, "disguise", "--key", str(tmp_path / "none.json"), "--input", "x.npz", "--out", "o"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_version():
    import tfdisguise

    console_script = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    for command in ([sys.executable, "-m", "tfdisguise.cli"], [console_script]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, f"tfdisguise {tfdisguise.__version__}\n"), done.stderr


def test_disguise_draws_no_progress_bar_into_a_log(key_path, npz, tmp_path, capsys):
    # stdout is captured here, as in a log file or a pipe: a redrawn bar would leave carriage returns.
    assert cli.main(["disguise", "--key", key_path, "--input", npz, "--out", str(tmp_path / "upload")]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 disguised images" in out and "\r" not in out


def test_serve_declares_tensorflow_model_server_flags(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["serve", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file",
                 "--ssl_config_file", "--grpc_max_threads", "--enable_batching", "--batching_parameters_file",
                 "--monitoring_config_file", "--host", "--rest_max_body_bytes", "--rest_read_timeout",
                 "--rest_max_connections", "--embedded"):
        assert flag in shown


def test_unknown_flags(capsys):
    # The embedded server cannot honour tensorflow_model_server's other flags: it says so instead of ignoring them.
    assert cli.main(["serve", "--embedded", "--model_base_path=/nowhere", "--num_load_threads=2"]) == 1
    assert "does not know --num_load_threads=2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # other commands take no unknown flags at all
        cli.main(["keygen", "--image-shape", "8,8,3", "--out", "k.json", "--enable_batching=true"])
    assert done.value.code == 2 and "unrecognized arguments: --enable_batching=true" in capsys.readouterr().err


def test_calibrate_passes_attacks_only_when_asked(monkeypatch, tmp_path):
    from tfdisguise.privacy import calibrate as calibration

    configs = []
    monkeypatch.setattr(calibration, "CalibrationConfig", lambda **kwargs: kwargs)
    monkeypatch.setattr(calibration, "calibrate", lambda config, log: configs.append(config))
    argv = ["calibrate", "--input", "x.npz", "--out", str(tmp_path / "report"), "--block-sizes", "4,8",
            "--noise-levels", "0"]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--attacks", "known_plaintext, block_norm"]) == 0
    assert "attacks" not in configs[0] and configs[0]["block_sizes"] == (4, 8)
    assert configs[1]["attacks"] == ("known_plaintext", "block_norm")


def test_keygen_defaults_to_the_recommended_setting_and_explains_it(tmp_path, capsys):
    out = tmp_path / "new" / "owner" / "key.json"  # missing parents are created
    assert cli.main(["keygen", "--image-shape", "28,28,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    spec = Key.load(str(out)).spec
    assert spec.block_size == (7, 7) and spec.noise_level == 100 and spec.has("permute")
    assert spec == Spec.recommended((28, 28, 1)) and spec.has("block_scramble") and not spec.has("rmt")
    # Any mechanism flag: RMT stays the base unless --rmt says otherwise, as before the default changed.
    for flags, described in [(["--rmt", "orthogonal"], "rmt(orthogonal,matrix) > permute > noise(100)"),
                             (["--aes"], "aes > rmt(orthogonal,matrix) > permute > noise(100)"),
                             (["--scramble", "shared", "--rmt", "none"],
                              "block_scramble(shared) > permute > noise(100)")]:
        path = tmp_path / f"k{len(flags)}{flags[0]}.json"
        assert cli.main(["keygen", "--image-shape", "28,28,1", *flags, "--out", str(path)]) == 0
        assert Key.load(str(path)).spec.describe() == "block 7x7: " + described, flags
    assert "16 blocks of 7x7" in printed and "cost: plan" in printed and "docs/RESULTS.md" in printed
    assert oct(os.stat(out.parent).st_mode & 0o777) == "0o700"
    assert "pixels: uint8, or float on the 0..255 scale" in printed


def test_predict_names_the_resize_for_a_png_of_another_size(tmp_path, capsys):
    from PIL import Image

    key_path = str(tmp_path / "key.json")
    assert cli.main(["keygen", "--image-shape", "28,28,1", "--out", key_path]) == 0
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert cli.main(["predict", "--key", key_path, "--server", "127.0.0.1:1", "--model", "m",
                     str(tmp_path / "digit.png")]) == 1
    err = capsys.readouterr().err
    assert "digit.png: images of shape (30, 30) do not match the key's image shape (28, 28, 1)" in err
    assert "Resize it to 28x28 first, e.g. PIL.Image.open(path).resize((28, 28))" in err


def test_keygen_never_writes_a_permutation_of_one_block(tmp_path):
    out = tmp_path / "k.json"
    assert cli.main(["keygen", "--image-shape", "32,32,3", "--block-size", "full", "--out", str(out)]) == 0
    spec = Key.load(str(out)).spec
    assert spec.num_blocks == 1 and not spec.has("permute")


def test_keygen_refuses_a_plan_over_the_cap_and_suggests_block_sizes(tmp_path, capsys):
    out = tmp_path / "k.json"
    code = cli.main(["keygen", "--image-shape", "224,224,3", "--block-size", "full", "--rmt-mode", "vector",
                     "--out", str(out)])
    assert code != 0 and not out.exists()
    assert "Block sizes that fit this image" in capsys.readouterr().err


def test_every_option_shows_its_default_in_help():
    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, parser in subcommands.items():
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text and "(default: (" not in text, name  # a default as a user types it
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert action.help and "default" in parser._get_formatter()._get_help_string(action).lower(), \
                    f"`tfdisguise {name} --help` does not show the default of {action.option_strings[0]}"
    text = subprocess.run([sys.executable, "-m", "tfdisguise.cli", "calibrate", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "(default: 1,10,100)" in " ".join(text.split())
