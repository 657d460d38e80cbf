"""Calibration as a map: several keys per setting (mean ± sd), separate public data, frontier.png, verdicts."""

import json
import os
import re

import numpy as np
import pytest
from helpers import two_classes

from tfdisguise import Key, cli
from tfdisguise.privacy import calibrate as calibration
from tfdisguise.privacy.calibrate import CalibrationConfig, aggregate_runs, setting_grid, skipped_settings
from tfdisguise.privacy.report import frontier_figure, frontier_settings, report_markdown


@pytest.fixture
def sources(tmp_path):
    data, public = str(tmp_path / "data.npz"), str(tmp_path / "public.npz")
    np.savez(data, **dict(zip("xy", two_classes(200, seed=1))))
    np.savez(public, **dict(zip("xy", two_classes(100, seed=2))))
    return data, public


def test_cli_map_with_two_keys_and_public_data(sources, tmp_path, capsys):
    data, public = sources
    out = str(tmp_path / "map")
    argv = ["calibrate", "--input", data, "--out", out, "--block-sizes", "4", "--mechanisms", "rmt,aes",
            "--noise-levels", "0", "--keys", "2", "--public", public, "--attacks", "block_norm", "--epochs", "1",
            "--batch-size", "32"]
    assert cli.main(argv) == 0
    names = ["b4x4-n0-orthogonal-matrix-perm", "b4x4-n0-aes-perm"]
    assert {"frontier.png", "report.md", "report.json", "tradeoff.png"} <= set(os.listdir(out))
    with open(os.path.join(out, "frontier.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    assert "Each setting ran under 2 keys" in text
    assert f"Attacker's public data: {public}, a separate source (100 images; none identical" in text
    for name in names:
        cells = next(line for line in text.splitlines() if line.startswith(f"| {name} |")).split(" | ")
        assert re.fullmatch(r"\d+\.\d% ± \d+\.\d", cells[1]), cells  # accuracy, mean ± sd
        assert re.fullmatch(r"\d\.\d\d ± \d\.\d\d \(block_norm\)", cells[5]), cells  # worst level-1 attack
        assert re.search(rf"^- `{name}`: (\*\*broken\*\* by|no attack reaches)", text, re.M)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["keys"] == 2 and report["public"]["images"] == 100 and report["public"]["shared_with_victim"] == 0
    for row in report["settings"]:
        assert len(row["runs"]) == 2 and len(set(row["fingerprints"])) == 2
        assert row["disguised_accuracy"] == pytest.approx(np.mean([r["disguised_accuracy"] for r in row["runs"]]))
        assert row["sd"]["disguised_accuracy"] >= 0 and row["attacks"]["block_norm"]["success_sd"] >= 0
        worst = row["worst_level1"]
        assert worst["attack"] == "block_norm" and worst["success"] == pytest.approx(np.mean(worst["per_key"]))
        assert row["broken_by"] in ([], ["block_norm"])
    assert report["pareto_front"] and set(report["pareto_front"]) <= set(names)

    # Resume with everything done: nothing is trained again, nothing rewritten.
    stamps = {n: os.stat(os.path.join(out, "results", n + ".json")).st_mtime_ns for n in names}
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 0
    logged = capsys.readouterr().out
    assert all(f"{n}: done before, skipped (resume)" in logged for n in names)
    assert "training simple_cnn on disguised" not in logged
    assert stamps == {n: os.stat(os.path.join(out, "results", n + ".json")).st_mtime_ns for n in names}

    # Again without --resume or --overwrite: refused, in the CLI's flag names, and nothing is touched.
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"`--out` ({out}) holds an earlier calibration (report.json, baseline.json, results)" in err
    assert "Pass `--resume` to keep" in err and "`--overwrite` to run every setting again" in err
    assert stamps == {n: os.stat(os.path.join(out, "results", n + ".json")).st_mtime_ns for n in names}


def fake_baseline(config, train, val, log):
    return None, {"val_accuracy": 0.9, "model": "m", "epochs": 1, "seconds": 0.0}


@pytest.fixture
def fake_runs(monkeypatch):
    """Stands in for training and attacking: records each call and returns a made-up run."""
    calls = []

    def run(name, spec, data, public, examiner, baseline, config, log, index):
        calls.append({"setting": name, "index": index, "public": public})
        success = [0.2, 0.4, 0.9][index % 3]
        return {"setting": name, "spec": spec.to_dict(), "fingerprint": f"f{index}", "plain_accuracy": 0.9,
                "disguised_accuracy": 0.8 + 0.05 * index, "visual_privacy": 0.9, "misusability": 0.1,
                "examiner_accuracy_plain": 0.9, "key_index": index, "seed": index,
                "attacks": {"one": {"level": 1, "success": success, "headline": {"one success": success}},
                            "two": {"level": 2, "success": 0.7, "headline": {"two success": 0.7}}}}

    monkeypatch.setattr(calibration, "_baseline", fake_baseline)
    monkeypatch.setattr(calibration, "_run_key", run)
    return calls


def test_more_keys_on_resume_run_only_the_missing_ones(sources, tmp_path, fake_runs):
    data, _ = sources
    config = CalibrationConfig(source=data, out=str(tmp_path / "map"), block_sizes=(4,), keys=2, attacks=())
    report = calibration.calibrate(config, log=lambda m: None)
    assert [(c["setting"], c["index"]) for c in fake_runs] == [("b4x4-n0-orthogonal-matrix-perm", 0),
                                                               ("b4x4-n0-orthogonal-matrix-perm", 1)]
    fake_runs.clear()
    messages = []
    report = calibration.calibrate(CalibrationConfig(**{**config.__dict__, "keys": 3, "resume": True}),
                                   log=messages.append)
    assert [c["index"] for c in fake_runs] == [2]
    assert any("2 of 3 keys done before; running the others" in m for m in messages)
    (row,) = report["settings"]
    assert row["keys"] == 3 and row["fingerprints"] == ["f0", "f1", "f2"]
    assert row["disguised_accuracy"] == pytest.approx(0.85)
    assert row["worst_level1"]["success"] == pytest.approx(0.5) and row["attacks"]["one"]["broken_keys"] == 1
    assert row["broken_by"] == ["one", "two"]  # means 0.5 and 0.7

    # Fewer keys than saved: the first ones are reused, nothing runs.
    fake_runs.clear()
    report = calibration.calibrate(CalibrationConfig(**{**config.__dict__, "keys": 1, "resume": True}),
                                   log=lambda m: None)
    assert fake_runs == [] and report["settings"][0]["fingerprints"] == ["f0"]
    with open(tmp_path / "map" / "report.md") as f:
        text = f.read()
    assert "| 80.0% |" in text and "±" not in text.split("## Which")[0]  # one key: no spread to show
    assert "- `b4x4-n0-orthogonal-matrix-perm`: **broken** by `two` (level 2, success 0.70).\n" in text


def test_public_data_choices(sources, tmp_path, fake_runs):
    data, public = sources
    base = dict(source=data, out=str(tmp_path / "map"), block_sizes=(4,), attacks=(), limit=100, overwrite=True)
    messages = []
    report = calibration.calibrate(CalibrationConfig(**base), log=messages.append)
    assert report["public"]["source"] == "train" and "owner's training split" in report["public"]["description"]
    assert len(fake_runs[-1]["public"][0]) == 100 == report["public"]["shared_with_training"]

    report = calibration.calibrate(CalibrationConfig(**base, public="rest"), log=messages.append)
    x_rest = fake_runs[-1]["public"][0]
    assert len(x_rest) == 160 - 100 and report["public"]["shared_with_training"] == 0
    assert report["public"]["shared_with_victim"] == 0

    report = calibration.calibrate(CalibrationConfig(**base, public=public, public_limit=30), log=messages.append)
    assert len(fake_runs[-1]["public"][0]) == 30 and report["public"]["images"] == 30
    with open(tmp_path / "map" / "report.md") as f:
        assert f"Attacker's public data: {public}, a separate source (30 images;" in f.read()

    # The victim's own images as public data: not disjoint, and the report says so.
    report = calibration.calibrate(CalibrationConfig(**base, public=data), log=messages.append)
    assert report["public"]["shared_with_victim"] == 20
    assert "warning: 20 of the victim's 20 images are also in the public data" in messages

    with pytest.raises(ValueError, match=r"`public='rest'` .* set `limit` below 160"):
        calibration.calibrate(CalibrationConfig(**{**base, "limit": None}, public="rest"), log=lambda m: None)
    other = str(tmp_path / "rgb.npz")
    np.savez(other, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"`public` images must have the victim's shape \(8, 8, 1\)"):
        calibration.calibrate(CalibrationConfig(**base, public=other), log=lambda m: None)
    np.savez(other, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.array([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"`public` labels must lie in \[0, 2\)"):
        calibration.calibrate(CalibrationConfig(**base, public=other), log=lambda m: None)


def test_grid_covers_every_mechanism_family():
    config = CalibrationConfig(source="x.npz", out="o", block_sizes=(4,), noise_levels=(0, 50),
                               noise_positions=("after", "before"), permute=(True, False),
                               rmt=("orthogonal", "none"), rmt_modes=("matrix", "vector"),
                               mechanisms=("rmt", "negpos_hash", "aes", "scramble"),
                               scramble_variants=("shared", "per-position"))
    grid = dict(setting_grid(config, (8, 8, 1)))
    assert "b4x4-n50before-orthogonal-vector" in grid and "b4x4-n0before-orthogonal-vector" not in grid
    assert grid["b4x4-n50before-orthogonal-vector"].describe() == "block 4x4: noise(50) > rmt(orthogonal,vector)"
    assert grid["b4x4-n0-nph-orthogonal-matrix-perm"].describe() == \
        "block 4x4: negpos_hash > rmt(orthogonal,matrix) > permute"
    assert grid["b4x4-n50-aes-perm"].describe() == "block 4x4: aes > permute > noise(50)"
    assert grid["b4x4-n0-scramble-perpos"].describe() == "block 4x4: block_scramble(per-position)"
    assert grid["b4x4-n0-none-perm"].describe() == "block 4x4: permute"
    assert not any("none-vector" in n for n in grid)
    # 9 mechanism variants (rmt and negpos_hash: orthogonal-matrix, orthogonal-vector, none; aes; two scrambles)
    # x 2 permutations x 3 noise placements (noise 0 once), less noise-before for AES (it cannot run) and for the
    # two scrambles (the same disguise in distribution as noise after), each with and without permutation.
    assert len(grid) == 9 * 2 * 3 - 2 - 4
    skipped = skipped_settings(config, (8, 8, 1))
    assert [n for n, _ in skipped] == [f"b4x4-n50before-{m}{p}" for p in ("-perm", "")
                                       for m in ("aes", "scramble-shared", "scramble-perpos")]
    assert "must come before RMT and noise" in skipped[0][1] and "same disguise, in distribution" in skipped[1][1]
    with pytest.raises(ValueError, match=r"`mechanisms` must be a non-empty selection of \('rmt', 'negpos_hash', "
                                         r"'aes', 'scramble'\). Received: mechanisms=\('rmt', 'des'\)"):
        CalibrationConfig(source="x.npz", out="o", mechanisms=("rmt", "des"))
    with pytest.raises(ValueError, match=r"`keys` must be an int >= 1"):
        CalibrationConfig(source="x.npz", out="o", keys=0)
    with pytest.raises(ValueError, match="must divide the image shape"):
        setting_grid(dataclass_replace(config, block_sizes=(3,)), (8, 8, 1))


def dataclass_replace(config, **changes):
    return CalibrationConfig(**{**config.__dict__, **changes})


def test_frontier_figure_and_front():
    def row(name, acc, worst, sd=0.01):
        return {"setting": name, "disguised_accuracy": acc, "plain_accuracy": 0.99, "visual_privacy": 0.9,
                "misusability": 0.1, "sd": {"disguised_accuracy": sd},
                "attacks": {"a": {"level": 1, "success": worst}},
                "worst_level1": {"success": worst, "sd": 0.02, "attack": "a"}}

    rows = [row("weak", 0.98, 0.9), row("strong", 0.6, 0.1), row("dominated", 0.55, 0.3), row("middle", 0.9, 0.4)]
    report = {"source": "s", "keys": 3, "baseline": {"val_accuracy": 0.99}, "settings": rows}
    assert frontier_settings(rows) == ["strong", "middle", "weak"]
    fig = frontier_figure(report)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "Pareto front" in labels and "plain baseline" in labels
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"weak", "strong", "dominated", "middle"} <= texts
    empty = frontier_figure(dict(report, settings=[dict(rows[0], attacks={}, worst_level1=None)]))
    assert "no level-1 attack ran" in {t.get_text() for t in empty.axes[0].texts}


def _overlaps(fig, texts):
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in texts]
    return [(a.get_text(), b.get_text()) for i, (a, p) in enumerate(zip(texts, boxes))
            for b, q in zip(texts[i + 1:], boxes[i + 1:]) if p.overlaps(q)]


def test_point_labels_do_not_overlap():
    from tfdisguise.privacy.report import tradeoff_figure

    def row(name, acc, worst, privacy):
        return {"setting": name, "disguised_accuracy": acc, "visual_privacy": privacy, "sd": {},
                "worst_level1": {"success": worst, "sd": 0.0, "attack": "a"}, "attacks": {"a": {"level": 1}}}

    # Four settings on one spot (every linear setting broken alike), as a real map has them.
    few = [row(f"b7x7-n100-setting-{i}", 0.8, 1.0, 0.9) for i in range(4)] + [row("aes", 0.3, 0.1, 0.99)]
    report = {"source": "s", "keys": 3, "baseline": {"val_accuracy": 0.99}, "settings": few}
    for fig in (frontier_figure(report), tradeoff_figure(report)):
        texts = [t for t in fig.axes[0].texts if t.get_text() != "no level-1 attack ran"]
        assert len(texts) == 5 and not _overlaps(fig, texts)
    # Many settings: numbered points, and a key beside the axes names them all.
    many = [row(f"setting-{i}", 0.8 + 0.001 * (i % 3), 0.95 + 0.01 * (i % 2), 0.9) for i in range(30)]
    fig = frontier_figure(dict(report, settings=many))
    numbers = [t for t in fig.axes[0].texts if t.get_text().isdigit()]
    assert len(numbers) == 30
    key = next(t.get_text() for t in fig.axes[0].texts if "setting-29" in t.get_text())
    assert key.splitlines()[0] == "1  setting-0"


def test_markdown_verdicts_name_partial_breaks():
    runs = [{"setting": "s", "disguised_accuracy": 0.9, "plain_accuracy": 0.95, "visual_privacy": 0.8,
             "misusability": 0.1, "attacks": {"a": {"level": 1, "success": v, "headline": {"a success": v}}}}
            for v in (0.1, 0.2, 0.6)]
    row = aggregate_runs(runs)
    text = report_markdown({"source": "d", "train_images": 1, "validation_images": 1, "seconds": 0, "keys": 3,
                            "baseline": {"model": "m", "epochs": 1, "val_accuracy": 0.95}, "settings": [row],
                            "skipped": [{"setting": "b2x2-n0-aes", "reason": "too small"}]})
    assert "- `s`: no attack reaches success 0.5; the strongest level-1 attack is `a` (level 1, success 0.30 ± " \
           "0.26, 1/3 keys); under some keys: `a` (level 1, success 0.30 ± 0.26, 1/3 keys)." in text
    assert "## Settings not run\n\n- `b2x2-n0-aes`: too small" in text


def test_keygen_flags(tmp_path, capsys):
    path = str(tmp_path / "aes.json")
    assert cli.main(["keygen", "--image-shape", "28,28,1", "--block-size", "4", "--rmt", "none", "--aes",
                     "--noise", "0", "--out", path]) == 0
    assert Key.load(path).spec.describe() == "block 4x4: aes > permute"
    path = str(tmp_path / "scramble.json")
    assert cli.main(["keygen", "--image-shape", "32,32,3", "--block-size", "4", "--rmt", "none",
                     "--scramble", "per-position", "--negpos-hash", "--noise", "0", "--out", path]) == 0
    assert Key.load(path).spec.describe() == "block 4x4: block_scramble(per-position) > negpos_hash > permute"
    assert cli.main(["keygen", "--image-shape", "32,32,3", "--block-size", "2", "--aes", "--out",
                     str(tmp_path / "small.json")]) == 1
    assert "at least 16 bytes" in capsys.readouterr().err


def test_list_settings_sizes_a_map_without_training(sources, tmp_path, capsys):
    data, _ = sources
    argv = ["calibrate", "--input", data, "--out", str(tmp_path / "unused"), "--block-sizes", "2,4",
            "--mechanisms", "aes,scramble", "--noise-levels", "0,30", "--keys", "4", "--attacks", "block_norm",
            "--list-settings"]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "b4x4-n30-aes-perm: block 4x4: aes > permute > noise(30)" in shown
    assert any(line.startswith("skipped b2x2-n0-aes-perm: `aes` encrypts each block") for line in shown)
    assert shown[-1] == f"10 setting(s) x 4 key(s) = 40 disguised trainings on {data} (8, 8, 1); " \
                        "attacks per training: block_norm"
    assert not os.path.exists(tmp_path / "unused")


def test_overwrite_runs_every_setting_again(sources, tmp_path, fake_runs):
    config = CalibrationConfig(source=sources[0], out=str(tmp_path / "map"), block_sizes=(4,), keys=2,
                               epochs=1, attacks=("block_norm",))
    calibration.calibrate(config, log=lambda m: None)
    assert len(fake_runs) == 2
    with pytest.raises(FileExistsError, match="holds an earlier calibration"):
        calibration.calibrate(config, log=lambda m: None)
    assert len(fake_runs) == 2
    calibration.calibrate(CalibrationConfig(**{**config.__dict__, "overwrite": True}), log=lambda m: None)
    assert len(fake_runs) == 4


def test_block_sizes_take_full_and_rectangles(sources, capsys):
    argv = ["calibrate", "--input", sources[0], "--out", "unused", "--block-sizes", "4,full,2x4", "--no-permute",
            "--mechanisms", "rmt", "--noise-levels", "0", "--list-settings"]
    assert cli.main(argv) == 0
    listed = capsys.readouterr().out
    for name in ("b4x4-n0-orthogonal-matrix:", "b8x8-n0-orthogonal-matrix:", "b2x4-n0-orthogonal-matrix:"):
        assert name in listed, listed
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--input", sources[0], "--out", "unused", "--block-sizes", "4,big"])
    assert exit_info.value.code == 2
    assert "expected comma-separated block sizes (N, HxW or full), got '4,big'" in capsys.readouterr().err


def test_report_only_reports_a_map_run_in_parts(sources, tmp_path, fake_runs, monkeypatch):
    config = CalibrationConfig(source=sources[0], out=str(tmp_path / "map"), block_sizes=(4,), keys=2,
                               epochs=1, noise_levels=(10,), attacks=("block_norm",))
    with pytest.raises(FileNotFoundError, match="holds no calibration"):
        calibration.calibrate(CalibrationConfig(**{**config.__dict__, "report_only": True}), log=lambda m: None)
    calibration.calibrate(config, log=lambda m: None)  # part 1: noise after
    assert len(fake_runs) == 2
    # The stand-in baseline wrote nothing; a real map leaves its baseline.json.
    with open(os.path.join(config.out, "baseline.json"), "w") as f:
        json.dump(dict(fake_baseline(*[None] * 4)[1], recipe=config.training_recipe()), f)
    monkeypatch.setattr(calibration, "_baseline", lambda *a: pytest.fail("report_only trains no baseline"))
    both = CalibrationConfig(**{**config.__dict__, "noise_positions": ("after", "before"), "report_only": True})
    report = calibration.calibrate(both, log=lambda m: None)
    assert len(fake_runs) == 2, "report_only trains nothing"
    assert [r["setting"] for r in report["settings"]] == ["b4x4-n10-orthogonal-matrix-perm"]
    assert report["skipped"] == [{"setting": "b4x4-n10before-orthogonal-matrix-perm",
                                  "reason": "not run: no results for it in this map's folder"}]
    assert os.path.exists(os.path.join(config.out, "frontier.png"))


def test_the_map_trains_the_recommended_recipe(sources, tmp_path, capsys):
    """calibrate --model block_adapter --model-options ... --augment ... --label-smoothing: the recipe reaches the
    plain baseline and every disguised model, and the saved recipe names it (so a map without it is not reused)."""
    data, _ = sources
    out = str(tmp_path / "map")
    # key_agnostic trains models of its own with the recipe: under random keys of the public spec.
    argv = ["calibrate", "--input", data, "--out", out, "--block-sizes", "4", "--mechanisms", "rmt", "--keys", "1",
            "--noise-levels", "0", "--attacks",
            "block_norm,key_agnostic", "--key-agnostic-keys", "2", "--epochs", "1", "--batch-size", "32", "--model",
            "block_adapter", "--model-options", "lr_multiplier=100", "--augment", "flip", "--label-smoothing", "0.1"]
    assert cli.main(argv) == 0
    logged = capsys.readouterr().out
    assert "training the plain baseline / examiner: block_adapter" in logged
    assert "training block_adapter on disguised images" in logged
    with open(os.path.join(out, "baseline.json")) as f:
        recipe = json.load(f)["recipe"]
    # The plain baseline's block model takes the map's only block size; the disguised ones take their key's.
    assert recipe["model_options"] == {"lr_multiplier": 100, "block_size": 4} and recipe["augment"] == "flip"
    assert recipe["label_smoothing"] == 0.1
    config = CalibrationConfig(source=data, out=out, model="block_adapter",
                                           model_options={"lr_multiplier": 100}, augment="flip", label_smoothing=0.1)
    train = config.train_config(2, disguised=True)
    assert (train.model_options, train.augment, train.label_smoothing, train.seed) == ({"lr_multiplier": 100},
                                                                                       "flip", 0.1, 2)
    assert config.train_config().model_options == {"lr_multiplier": 100, "block_size": 7}  # the default grid
    several = CalibrationConfig(source=data, out=out, block_sizes=(4, 7), model="block_adapter")
    with pytest.raises(ValueError, match=r"`block_adapter` needs a block size for the plain baseline, and this map "
                                         r"has 2 \(4x4, 7x7\): pass one .*`--model-options block_size=N`"):
        several.recipe()
    with open(os.path.join(out, "report.json")) as f:
        row = json.load(f)["settings"][0]
    assert row["recipe"]["model"] == "block_adapter" and set(row["attacks"]) == {"block_norm", "key_agnostic"}
    assert np.isfinite(row["attacks"]["key_agnostic"]["success"])
    assert cli.main([*argv[:6], "4,7", *argv[7:], "--overwrite"]) == 1
    assert "--model-options block_size=N" in capsys.readouterr().err
    chosen = CalibrationConfig(source=data, out=out, block_sizes=(4, 7), model="block_adapter",
                               model_options={"block_size": 7})
    assert chosen.train_config().model_options == {"block_size": 7} and chosen.train_config(0, True).model_options == {}
    # Without them the recipe is what maps made before these options saved, so those stay reusable.
    assert set(CalibrationConfig(source=data, out=out).training_recipe()) == {
        "source", "validation_fraction", "limit", "seed", "model", "epochs", "batch_size", "learning_rate"}
