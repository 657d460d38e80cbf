"""The scramble search: block scrambling undone by trying every transform it can draw, without the key."""

import numpy as np
import pytest
from keyfree_data import attack_input, fixed_key, half_examiner, structured

from tfdisguise import Spec
from tfdisguise.mechanisms.scramble import BlockScramble
from tfdisguise.privacy.attacks import run_attacks
from tfdisguise.privacy.attacks.scramble_search import scramble_family

SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return structured(rng, 3000, SHAPE), structured(rng, 1000, SHAPE)


def test_the_family_is_every_transform_the_step_draws():
    spec = Spec.create((8, 8, 3), 4, rmt=None, scramble="per_position")
    matrices, biases, choices = scramble_family(BlockScramble(per_position=True), spec)
    assert len(choices) == 4 * 2 * 2 * 6 == len(matrices)
    assert np.allclose(np.einsum("kij,kil->kjl", matrices, matrices), np.eye(48))  # orthogonal
    assert set(np.unique(biases)) == {0.0, 255.0}
    # A key's own draws are members of the family.
    material = fixed_key(spec).materials[0]
    assert {tuple(row) for row in material.tolist()} <= {tuple(c) for c in choices}
    assert len(scramble_family(BlockScramble(rotate=False, shuffle_channels=False), spec)[2]) == 4


@pytest.mark.parametrize("variant, permute, position", [("per_position", True, "after"), ("shared", True, "after"),
                                                        ("per_position", False, "before")])
def test_the_search_breaks_block_scrambling(data, variant, permute, position):
    spec = Spec.create(SHAPE, 4, rmt=None, scramble=variant, permute=permute, noise=20, noise_position=position)
    result = run_attacks(attack_input(spec, *data, half_examiner(SHAPE)), ["scramble_search"])["scramble_search"]
    assert result.applicable and result.success > 0.95
    assert result.mse < 20.0 ** 2 / 12 + 20.0  # what is left is about the noise itself
    if permute:
        assert result.positions_correct == 1.0
    key = fixed_key(spec)
    material = key.materials[[s.name for s in spec.steps].index("block_scramble")]
    _, _, choices = scramble_family(spec.steps_of(BlockScramble)[0], spec)
    found = [choices[m] for m in result.details["members"]]
    # members[j] is for disguised position j, which holds plain position perm[j]; the key's rows are by plain one.
    drawn = [tuple(material[source].tolist()) for source in result.details["perm"]]
    assert found == drawn, "every position's transform, as the key drew it"


def test_the_search_is_at_chance_where_positions_and_transforms_look_alike():
    rng = np.random.default_rng(3)

    def draw(n):  # i.i.d. pixels: every transform predicts the same statistics
        return rng.integers(0, 256, (n,) + SHAPE).astype(float), np.arange(n) % 2

    spec = Spec.create(SHAPE, 4, rmt=None, scramble="per_position", permute=True)
    result = run_attacks(attack_input(spec, draw(3000), draw(1000), half_examiner(SHAPE)),
                         ["scramble_search"])["scramble_search"]
    assert result.applicable and result.positions_correct <= 0.25
    assert result.mse > 5000  # nothing recovered: two independent uniform images differ by 255^2/6 on average


def test_the_search_does_not_apply_beyond_scrambling(data):
    for spec, reason in [(Spec.create(SHAPE, 4), "no block_scramble step"),
                         (Spec.create(SHAPE, 4, scramble="shared"), "also has ['rmt']")]:
        result = run_attacks(attack_input(spec, *data, half_examiner(SHAPE)), ["scramble_search"])["scramble_search"]
        assert not result.applicable and reason in result.reason


def test_the_searchs_inverse_is_one_affine_map_that_undoes_the_key(data):
    """fit + inverse_affine: the fixed first layer of benchmarks/inverse_stem.py for scrambling specs."""
    from tfdisguise import disguise
    from tfdisguise.privacy.attacks.scramble_search import fit, inverse_affine, search, undo

    (public, _), (victim, _) = data
    spec = Spec.create(SHAPE, 4, rmt=None, scramble="per_position", permute=True, noise=0)
    key = fixed_key(spec)
    disguised = disguise(victim, key)
    perm, members = fit(public, disguised, spec)
    g, c = inverse_affine(spec, perm, members)
    assert g.shape == (256, 256) and c.shape == (256,)
    mapped = disguised.reshape(len(victim), -1) @ g + c
    np.testing.assert_allclose(mapped, undo(disguised, spec, perm, members).reshape(len(victim), -1), atol=1e-6)
    # Without noise the search's estimate is the key's, so the map gives back the plain images exactly.
    # (to float32's precision: the disguised images are float32)
    np.testing.assert_allclose(mapped.reshape(victim.shape), victim, atol=1e-3)
    np.testing.assert_allclose(search(public, disguised, spec)[0], np.clip(mapped, 0, 255).reshape(victim.shape),
                               atol=1e-3)
