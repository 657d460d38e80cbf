"""The attack interface: AttackInput validation, the registry, selection, and a toy attack in a calibration."""

import dataclasses
import json
import os

import numpy as np
import pytest
from helpers import make_key
from test_privacy import brightness_model, synthetic_classes

from tfdisguise import Spec, disguise
from tfdisguise.privacy import (
    ATTACKS,
    AttackInput,
    AttackResult,
    KnownPlaintextResult,
    block_norm_attack,
    known_plaintext_attack,
    register_attack,
    run_attacks,
)
from tfdisguise.privacy.calibrate import CalibrationConfig, calibrate


@dataclasses.dataclass(kw_only=True)
class ToyResult(AttackResult):
    mean_gap: float

    def headline(self):
        return {"toy mean gap": self.mean_gap}


def toy_attack(inp, *, scale=1.0):
    """Toy: how far the disguised images' mean brightness is from the public images'."""
    gap = abs(float(np.mean(inp.public_plain)) - float(np.mean(inp.victim_disguised))) / 255.0
    return ToyResult(success=min(1.0, gap * scale), mean_gap=gap,
                     details={"saw_leak": inp.leaked_plain is not None, "scale": scale})


@pytest.fixture
def toy():
    register_attack("toy", level=1)(toy_attack)
    yield ATTACKS["toy"]
    ATTACKS.pop("toy")


@pytest.fixture
def setup(rng):
    """A small keyed setting and an AttackInput with every field filled in."""
    x, y = synthetic_classes(rng, n=120)
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector", permute=True)
    inp = AttackInput(spec=key.spec, victim_disguised=disguise(x[80:], key), victim_labels=y[80:],
                      victim_plain=x[80:], num_classes=2, public_plain=x[:80], public_labels=y[:80],
                      leaked_plain=x[:20], leaked_disguised=disguise(x[:20], key), examiner=brightness_model(),
                      true_perm=key.materials[1], seed=0, setting="s")
    return key, inp


def test_attack_input_validate_names_the_field(setup):
    _, inp = setup
    inp.validate()
    bad = [
        ({"spec": {"image_shape": [8, 8, 1]}}, "AttackInput.spec"),
        ({"num_classes": 1}, "AttackInput.num_classes"),
        ({"victim_disguised": np.zeros((40, 4, 4, 1))}, "AttackInput.victim_disguised"),
        ({"victim_labels": np.zeros(39, int)}, "AttackInput.victim_labels"),
        ({"victim_labels": np.full(40, 2)}, "AttackInput.victim_labels"),
        ({"victim_labels": np.zeros(40)}, "AttackInput.victim_labels"),  # float labels
        ({"victim_plain": np.zeros((39, 8, 8, 1))}, "AttackInput.victim_plain"),
        ({"public_labels": None}, "AttackInput.public_labels"),
        ({"leaked_disguised": np.zeros((19, 8, 8, 1))}, "AttackInput.leaked_disguised"),
        ({"leaked_plain": None}, "AttackInput.leaked_plain"),
        ({"examiner": "model.keras"}, "AttackInput.examiner"),
        ({"true_perm": np.array([0, 0, 1, 2])}, "AttackInput.true_perm"),
        ({"seed": 1.5}, "AttackInput.seed"),
    ]
    for change, field in bad:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            dataclasses.replace(inp, **change).validate()


def test_registry_runs_selected_attacks_and_hides_leaks_from_level_1(toy, setup):
    _, inp = setup
    assert list(ATTACKS)[:3] == ["known_plaintext", "block_norm", "key_agnostic"]
    assert (toy.level, ATTACKS["known_plaintext"].level, ATTACKS["block_norm"].level) == (1, 2, 1)
    results = run_attacks(inp, ["toy", "known_plaintext"], options={"toy": {"scale": 2.0},
                                                                    "known_plaintext": {"ks": (1, 20)}})
    assert list(results) == ["toy", "known_plaintext"]
    toy_result = results["toy"]
    assert (toy_result.name, toy_result.level, toy_result.setting) == ("toy", 1, "s")
    assert toy_result.details == {"saw_leak": False, "scale": 2.0}  # level 1 never sees the leaked pairs
    as_json = json.loads(toy_result.to_json())
    assert as_json["headline"] == {"toy mean gap": pytest.approx(toy_result.mean_gap)}
    assert "samples" not in as_json

    kpa = results["known_plaintext"]
    assert isinstance(kpa, KnownPlaintextResult) and kpa.level == 2
    assert list(kpa.headline()) == ["KPA success k=1", "KPA success k=20"]
    # 20 noise-free pairs > d = 16: the reconstruction is exact, so the examiner does as well as on originals.
    assert kpa.by_k["20"]["attack_success"] == pytest.approx(1.0)
    assert kpa.success == pytest.approx(1.0)
    assert [t for t, _ in kpa.pictures()] == ["KPA k=1", "KPA k=20"]
    assert "samples" not in kpa.to_dict()

    with pytest.raises(ValueError, match=r"Unknown attack\(s\) \['nope'\]; known attacks: \[.*'known_plaintext'"):
        run_attacks(inp, ["nope"])
    with pytest.raises(ValueError, match="Unknown attack"):
        run_attacks(inp, ["toy"], options={"kpa": {}})  # a misspelled option name is not ignored
    with pytest.raises(ValueError, match=r"needs AttackInput fields \['leaked_plain', 'leaked_disguised'\]"):
        run_attacks(dataclasses.replace(inp, leaked_plain=None, leaked_disguised=None), ["known_plaintext"])


def test_old_entry_points_return_registry_results(setup):
    key, inp = setup
    kpa = known_plaintext_attack(inp.leaked_plain, inp.leaked_disguised, inp.victim_plain, inp.victim_disguised,
                                 inp.victim_labels, key.spec, inp.examiner, ks=(1, 20), setting="s")
    assert (kpa.name, kpa.level, kpa.setting) == ("known_plaintext", 2, "s")
    assert kpa.success == min(1.0, kpa.by_k["20"]["attack_success"])
    bn = block_norm_attack(inp.public_plain, inp.public_labels, inp.victim_disguised, inp.victim_labels,
                           inp.victim_plain, key.spec, num_classes=2, true_perm=key.materials[1], epochs=2,
                           reference_accuracy=0.5)
    assert bn.name == "block_norm" and bn.success == min(1.0, bn.examiner_accuracy / 0.5)
    assert bn.headline() == {"block-norm examiner accuracy": bn.examiner_accuracy}
    assert 0.0 <= bn.permutation_recovered <= 1.0


def test_register_attack_rejects_bad_names_levels_duplicates_and_results(toy, setup):
    _, inp = setup
    with pytest.raises(ValueError, match="`level` must be 1"):
        register_attack("other", level=3)
    with pytest.raises(ValueError, match="`name` must start with a letter"):
        register_attack("a,b")
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_attack("toy")(lambda inp: None)
    register_attack("toy")(toy_attack)  # the same definition again (a re-run cell) is fine
    with pytest.raises(ValueError, match=r"`success` must be in \[0, 1\]"):
        AttackResult(success=1.5)
    register_attack("broken")(lambda inp: {"success": 1.0})
    try:
        with pytest.raises(TypeError, match="must return an AttackResult"):
            run_attacks(inp, ["broken"])
    finally:
        ATTACKS.pop("broken")


def test_calibration_config_selects_attacks_by_name(toy):
    config = CalibrationConfig(source="x.npz", out="o", attacks=["toy", "known_plaintext"])
    assert config.attacks == ("toy", "known_plaintext")
    assert config.selected_attacks() == ("toy", "known_plaintext")
    assert config.recipe()["attacks"] == ["toy", "known_plaintext"]
    assert list(config.attack_options()) == ["known_plaintext"]
    assert "key_agnostic" not in CalibrationConfig(source="x.npz", out="o", key_agnostic=False).selected_attacks()
    assert CalibrationConfig(source="x.npz", out="o").selected_attacks()[:3] == (
        "known_plaintext", "block_norm", "key_agnostic")
    with pytest.raises(ValueError, match=r"Unknown attack\(s\) \['kpa'\]; known attacks: .*'toy'"):
        CalibrationConfig(source="x.npz", out="o", attacks=("kpa",))
    with pytest.raises(ValueError, match="`specs` names must be file-name safe"):
        CalibrationConfig(source="x.npz", out="o", specs={"a/b": Spec.create((8, 8, 1), 4)})


def test_toy_attack_column_in_calibration_report(toy, rng, tmp_path):
    x, y = synthetic_classes(rng, n=120)
    src = str(tmp_path / "data.npz")
    np.savez(src, x=x, y=y)
    out = str(tmp_path / "report")
    spec = Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode="vector", permute=True, noise=10)
    config = CalibrationConfig(source=src, out=out, specs={"mine": spec}, attacks=("known_plaintext", "toy"),
                               epochs=1, batch_size=32, ks=(1, 4), attack_images=20)
    messages = []
    report = calibrate(config, log=messages.append)
    (row,) = report["settings"]
    assert row["setting"] == "mine" and Spec.from_dict(row["spec"]) == spec
    assert list(row["attacks"]) == ["known_plaintext", "toy"]  # the selection, nothing else
    gap = row["attacks"]["toy"]["headline"]["toy mean gap"]
    assert 0.0 <= gap <= 1.0 and row["attacks"]["toy"]["details"]["saw_leak"] is False
    with open(os.path.join(out, "report.json")) as f:
        saved = json.load(f)
    assert saved["settings"][0]["attacks"]["toy"]["headline"] == {"toy mean gap": pytest.approx(gap)}
    assert saved["config"]["specs"] == {"mine": spec.to_dict()}
    with open(os.path.join(out, "report.md")) as f:
        lines = f.read().splitlines()
    header = next(line for line in lines if line.startswith("| setting |"))
    assert header.endswith("| KPA success k=1 | KPA success k=4 | toy mean gap |")
    assert "block-norm" not in header
    assert next(line for line in lines if line.startswith("| mine |")).endswith(f"| {gap:.2f} |")
    assert "- `toy` (level 1): Toy: how far the disguised images' mean brightness" in "\n".join(lines)
    assert {"samples_mine.png", "kpa_curve.png", "tradeoff.png"} <= set(os.listdir(out))

    # The selection is part of the recipe: another selection reruns the setting, not the plain baseline.
    messages.clear()
    report = calibrate(dataclasses.replace(config, attacks=("toy",), resume=True), log=messages.append)
    assert any("resume: plain baseline" in m for m in messages)
    assert any("mine: the recipe changed" in m for m in messages)
    assert list(report["settings"][0]["attacks"]) == ["toy"]


def test_true_permutation_is_the_keys_block_order_and_none_without_one():
    from tfdisguise.privacy.attacks import true_permutation

    key = make_key(image_shape=(8, 8, 1), block_size=2, rmt="orthogonal", permute=True)
    perm = true_permutation(key)
    assert sorted(perm.tolist()) == list(range(16))
    # the permuted blocks are where the permutation says: undo the RMT-free part of the disguise by hand
    plain = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    only_perm = make_key(image_shape=(8, 8, 1), block_size=2, permute=True, rmt=None, noise=0)
    blocks = disguise(plain, only_perm).reshape(4, 2, 4, 2).transpose(0, 2, 1, 3).reshape(16, 4)
    plain_blocks = plain.reshape(4, 2, 4, 2).transpose(0, 2, 1, 3).reshape(16, 4)
    order = true_permutation(only_perm)
    assert {tuple(b) for b in blocks} == {tuple(b) for b in plain_blocks}
    assert any(np.array_equal(blocks, plain_blocks[p]) for p in (order, np.argsort(order)))
    assert true_permutation(make_key(image_shape=(8, 8, 1), block_size=2, rmt="orthogonal", permute=False)) is None
