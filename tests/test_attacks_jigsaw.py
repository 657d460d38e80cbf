"""The jigsaw attack: block positions placed from permutation-proof statistics alone."""

import numpy as np
import pytest
from keyfree_data import attack_input, half_examiner, structured

from tfdisguise import Spec
from tfdisguise.privacy.attacks import run_attacks

SHAPE = (16, 16, 1)  # 16 positions of 4 x 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return structured(rng, 3000, SHAPE), structured(rng, 1000, SHAPE)


@pytest.mark.parametrize("kind, mode", [("orthogonal", "vector"), ("projection", "matrix")])
def test_jigsaw_places_every_block_under_rmt_and_noise(data, kind, mode):
    spec = Spec.create(SHAPE, 4, rmt=kind, rmt_mode=mode, permute=True, noise=20)
    result = run_attacks(attack_input(spec, *data, half_examiner(SHAPE)), ["jigsaw"])["jigsaw"]
    assert result.applicable and result.positions_correct == 1.0
    assert result.headline() == {"jigsaw success": result.success, "jigsaw positions correct": 1.0}
    assert result.details["perm"] == np.asarray(attack_input(spec, *data, None).true_perm).tolist()


def test_jigsaw_undoes_a_permutation_only_disguise(data):
    spec = Spec.create(SHAPE, 4, rmt=None, permute=True, noise=10)
    result = run_attacks(attack_input(spec, *data, half_examiner(SHAPE)), ["jigsaw"])["jigsaw"]
    assert result.positions_correct == 1.0 and result.success > 0.95
    assert result.mse < 10.0 ** 2 / 12 + 1.0  # what is left is the noise itself
    assert [t for t, _ in result.pictures()] == ["re-assembled"]


def test_jigsaw_is_at_chance_on_positions_that_look_alike():
    rng = np.random.default_rng(3)

    def draw(n):
        return rng.integers(0, 256, (n,) + SHAPE).astype(float), np.arange(n) % 2

    spec = Spec.create(SHAPE, 4, rmt="orthogonal", rmt_mode="vector", permute=True)
    result = run_attacks(attack_input(spec, draw(3000), draw(1000), half_examiner(SHAPE)), ["jigsaw"])["jigsaw"]
    assert result.applicable and result.positions_correct <= 0.25  # chance is 1/16


def test_jigsaw_does_not_apply_without_a_permutation(data):
    spec = Spec.create(SHAPE, 4, permute=False)
    result = run_attacks(attack_input(spec, *data, half_examiner(SHAPE)), ["jigsaw"])["jigsaw"]
    assert not result.applicable and result.reason == "the spec does not permute block positions"
    assert result.headline() == {"jigsaw success": None, "jigsaw positions correct": None}
