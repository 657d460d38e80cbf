"""The spectral attack: it recovers orthogonal RMT and the permutation where the data's second-order
structure is distinctive, and stays at chance where the data are isotropic."""

import numpy as np
import pytest
from keyfree_data import attack_input, fixed_key, half_examiner, pixel0_examiner, separated, sphere, structured

from tfdisguise import Spec, disguise
from tfdisguise.privacy.attacks import ATTACKS, run_attacks
from tfdisguise.privacy.attacks._moments import Moments
from tfdisguise.privacy.attacks.spectral import SpectralResult, estimate_spectral


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return structured(rng, 4000), structured(rng, 1500)


@pytest.mark.parametrize("mode", ["matrix", "vector"])
def test_spectral_recovers_the_transform_of_a_well_separated_spectrum(mode):
    rng = np.random.default_rng(2)
    (public, _), (victim, _) = separated(rng, 4000), separated(rng, 1500)
    spec = Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode=mode, permute=True)
    key = fixed_key(spec)
    est = estimate_spectral(public, disguise(victim, key), spec)
    rmt, perm = key.materials
    np.testing.assert_array_equal(est.perm, perm)
    # output j is plain block perm[j] times R[perm[j]]; errors relative to |R|_F = sqrt(n)
    error = est.mats - rmt[perm]
    if mode == "matrix":
        assert (np.linalg.norm(error, axis=(1, 2)) / np.sqrt(error.shape[1])).max() < 0.02
    else:
        # the weakest of 16 directions (0.6^15 of the strongest) cannot be pinned down from 1,500
        # images; the transform on the four strongest ones can
        pooled = Moments.of(est.model.samples(public)).pooled()
        top = np.linalg.eigh(pooled)[1][:, :, ::-1][:, :, :4][perm]
        assert (np.linalg.norm(np.einsum("jdk,jde->jke", top, error), axis=(1, 2)) / 2.0).max() < 0.15
    recon = est.reconstruct(disguise(victim, key), inverse="direct")
    assert np.mean((recon - victim) ** 2) < 0.02 * np.var(victim)


@pytest.mark.parametrize("inverse", ["lmmse", "direct"])
def test_the_estimate_as_one_affine_map_is_its_reconstruction(data, inverse):
    """`affine` is what a model's fixed first layer holds (benchmarks/inverse_stem.py): the same images as
    `reconstruct` wherever those are not clipped."""
    (public, _), (victim, _) = data
    spec = Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode="matrix", permute=True, noise=30)
    disguised = disguise(victim, fixed_key(spec))
    est = estimate_spectral(public, disguised, spec)
    disguised = disguised[:50]
    g, c = est.affine(inverse=inverse)
    assert g.shape == (64, 64) and c.shape == (64,) and g.dtype == np.float32
    mapped = (disguised.reshape(50, -1) @ g + c).reshape(disguised.shape)
    np.testing.assert_allclose(np.clip(mapped, 0, 255), est.reconstruct(disguised, inverse=inverse), atol=1e-2)
    with pytest.raises(ValueError, match="`inverse` must be"):
        est.affine(inverse="pinv")
    est.MAX_AFFINE_SIZE = 63  # an instance attribute shadows the class's: one pixel short of these 8x8 images
    with pytest.raises(ValueError, match=r"would be 64 x 64; at most 63"):
        est.affine()


@pytest.mark.parametrize("mode, position", [("matrix", "after"), ("vector", "before")])
def test_spectral_breaks_orthogonal_rmt_permutation_and_noise(data, mode, position):
    public, victim = data
    spec = Spec.create((8, 8, 1), 4, rmt="orthogonal", rmt_mode=mode, permute=True, noise=30,
                       noise_position=position)
    result = run_attacks(attack_input(spec, public, victim, half_examiner()), ["spectral"])["spectral"]
    assert isinstance(result, SpectralResult) and result.applicable
    assert (result.name, result.level) == ("spectral", 1)
    assert result.success > 0.95 and result.positions_correct == 1.0
    assert result.mse < 0.1 * np.var(victim[0])  # the images themselves, not only their class
    assert [t for t, _ in result.pictures()] == ["reconstructed"]
    assert result.to_dict()["headline"] == {"spectral success": result.success}


def test_spectral_stays_at_chance_on_isotropic_data():
    rng = np.random.default_rng(1)
    spec = Spec.create((4, 4, 1), None, rmt="orthogonal", rmt_mode="vector", permute=False)
    inp = attack_input(spec, sphere(rng, 3000), sphere(rng, 1500), pixel0_examiner())
    result = run_attacks(inp, ["spectral"])["spectral"]
    assert result.applicable and result.examiner_accuracy_original == 1.0
    assert abs(result.attacked_accuracy - 0.5) < 0.15  # chance: nothing says where pixel 0 went
    est = estimate_spectral(inp.public_plain, inp.victim_disguised, spec)
    assert np.linalg.norm(est.mats[0] - fixed_key(spec).materials[0]) > 1.0


def test_spectral_says_when_it_does_not_apply(data):
    public, victim = data
    projection = Spec.create((8, 8, 1), 4, rmt="projection", noise=10)
    result = run_attacks(attack_input(projection, public, victim, half_examiner()), ["spectral"])["spectral"]
    assert not result.applicable and result.success == 0.0
    assert "'projection'" in result.reason and result.headline() == {"spectral success": None}
    assert result.summary().endswith("not applicable: " + result.reason)
    assert ATTACKS["spectral"].description.startswith("Spectral alignment")
    with pytest.raises(ValueError, match="`inverse` must be 'lmmse' or 'direct'"):
        run_attacks(attack_input(projection, public, victim, half_examiner()), ["spectral"],
                    options={"spectral": {"inverse": "exact"}})
