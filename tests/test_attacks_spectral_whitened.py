"""The whitened spectral attack: it undoes projection (non-orthogonal) RMT where the data's structure is
distinctive, stays at chance on isotropic data, and says when a spec is beyond it."""

import numpy as np
import pytest
from keyfree_data import (
    ToySubstitution,
    attack_input,
    fixed_key,
    half_examiner,
    pixel0_examiner,
    separated,
    sphere,
    structured,
)

from tfdisguise import Spec, disguise
from tfdisguise.privacy.attacks import run_attacks
from tfdisguise.privacy.attacks.spectral_whitened import estimate_whitened
from tfdisguise.spec import Permute


def test_whitened_recovers_a_projection_transform_and_the_permutation():
    rng = np.random.default_rng(2)
    (public, _), (victim, _) = separated(rng, 4000), separated(rng, 1500)
    spec = Spec.create((8, 8, 1), 4, rmt="projection", rmt_mode="matrix", permute=True)
    key = fixed_key(spec)
    est = estimate_whitened(public, disguise(victim, key), spec)
    rmt, perm = key.materials
    np.testing.assert_array_equal(est.perm, perm)
    error = np.linalg.norm(est.mats - rmt[perm], axis=(1, 2)) / np.linalg.norm(rmt[perm], axis=(1, 2))
    assert error.max() < 0.1


@pytest.mark.parametrize("mode, shape, position", [("matrix", (8, 8, 1), "after"), ("vector", (16, 16, 1), "before")])
def test_whitened_breaks_projection_rmt_permutation_and_noise(mode, shape, position):
    rng = np.random.default_rng(0)
    public, victim = structured(rng, 4000, shape), structured(rng, 1500, shape)
    spec = Spec.create(shape, 4, rmt="projection", rmt_mode=mode, permute=True, noise=20, noise_position=position)
    result = run_attacks(attack_input(spec, public, victim, half_examiner(shape)),
                         ["spectral_whitened"])["spectral_whitened"]
    assert result.applicable and result.level == 1
    assert result.success > 0.95 and result.details["regularization"] > 0
    if mode == "matrix":
        assert result.positions_correct == 1.0
        assert result.mse < 0.1 * np.var(victim[0]), result.summary()
    else:
        # whitening leaves a vector-mode position only its mean and its canonical correlations with the
        # others (it needs more positions than matrix mode), and two look-alike positions may trade places
        assert result.positions_correct >= 0.85
        assert result.mse < 0.25 * np.var(victim[0]), result.summary()


def test_whitened_stays_at_chance_on_isotropic_data():
    rng = np.random.default_rng(1)
    spec = Spec.create((4, 4, 1), None, rmt="projection", rmt_mode="vector", permute=False)
    result = run_attacks(attack_input(spec, sphere(rng, 3000), sphere(rng, 1500), pixel0_examiner()),
                         ["spectral_whitened"])["spectral_whitened"]
    assert result.applicable and abs(result.attacked_accuracy - 0.5) < 0.15


def test_whitened_says_when_it_does_not_apply():
    rng = np.random.default_rng(0)
    spec = Spec((8, 8, 1), 4, steps=(ToySubstitution(), Permute()))
    result = run_attacks(attack_input(spec, structured(rng, 50), structured(rng, 20), half_examiner()),
                         ["spectral_whitened", "spectral"])
    for r in result.values():
        assert not r.applicable and r.success == 0.0 and "toy_substitution" in r.reason
