"""The ECB leak: a deterministic disguise shows which blocks are background, which gives the class away."""

import numpy as np
import pytest
from keyfree_data import ToySubstitution, attack_input, fixed_key, half_examiner

from tfdisguise import Spec, disguise
from tfdisguise.privacy.attacks import run_attacks
from tfdisguise.privacy.attacks.ecb_leak import background_map
from tfdisguise.spec import RMT, Noise, Permute


def left_or_right(rng, n):
    """Class 1: a black left half and random pixels on the right; class 0: the mirror image."""
    y = np.arange(n) % 2
    x = rng.integers(1, 256, (n, 8, 8, 1)).astype(float)
    x[y == 1, :, :4] = 0.0
    x[y == 0, :, 4:] = 0.0
    return x, y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return left_or_right(rng, 600), left_or_right(rng, 200)


def test_background_map_sees_through_a_deterministic_cipher(data):
    (x, _), _ = data
    spec = Spec((8, 8, 1), 2, steps=(ToySubstitution(),))
    np.testing.assert_array_equal(background_map(disguise(x, fixed_key(spec)), spec), background_map(x, spec.plain()))


@pytest.mark.parametrize("steps", [(ToySubstitution(), Permute()), (RMT("orthogonal", "vector"), Permute())])
def test_ecb_leak_classifies_through_deterministic_disguises(data, steps):
    spec = Spec((8, 8, 1), 2, steps=steps)
    result = run_attacks(attack_input(spec, *data, half_examiner()), ["ecb_leak"])["ecb_leak"]
    assert result.applicable and result.level == 1
    assert result.success > 0.9 and result.attacked_accuracy > 0.9
    assert result.background_share == pytest.approx(0.5, abs=0.05)
    assert result.plain_map_accuracy > 0.9 and result.chance == 0.5
    assert [t for t, _ in result.pictures()] == ["background map"]
    assert "ecb_leak success" in result.to_dict()["headline"]


def test_ecb_leak_is_at_chance_when_no_block_repeats():
    rng = np.random.default_rng(1)

    def draw(n):
        return rng.integers(0, 256, (n, 8, 8, 1)).astype(float), np.arange(n) % 2

    spec = Spec((8, 8, 1), 2, steps=(ToySubstitution(), Permute()))
    result = run_attacks(attack_input(spec, draw(600), draw(400), half_examiner()), ["ecb_leak"])["ecb_leak"]
    assert result.applicable and abs(result.attacked_accuracy - 0.5) < 0.1


def test_ecb_leak_does_not_apply_to_noisy_disguises(data):
    spec = Spec((8, 8, 1), 2, steps=(ToySubstitution(), Permute(), Noise(10)))
    result = run_attacks(attack_input(spec, *data, half_examiner()), ["ecb_leak"])["ecb_leak"]
    assert not result.applicable and result.success == 0.0 and "noise" in result.reason
