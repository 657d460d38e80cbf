import json

import pytest
from helpers import make_key

from tfdisguise.identity import Identity, IdentityError, KeyMismatchError


def test_identity_is_public_and_round_trips(tmp_path):
    key = make_key(image_shape=(8, 8, 1), block_size=4, noise=10)
    ident = key.identity
    path = ident.save(str(tmp_path))
    with open(path) as f:
        on_disk = json.load(f)
    assert set(on_disk) == {"fingerprint", "spec"}
    assert Identity.load(str(tmp_path)) == ident == Identity.from_dict(on_disk)


def test_check_names_both_fingerprints_and_specs():
    key = make_key(image_shape=(8, 8, 1), block_size=4)
    other = make_key(seed=1, image_shape=(8, 8, 1), block_size=4)
    with pytest.raises(KeyMismatchError, match=f"belongs to key {key.fingerprint}.*given is {other.fingerprint}"):
        key.identity.check(other, "The model")
    same_secret_other_spec = make_key(image_shape=(8, 8, 1), block_size=2)
    with pytest.raises(KeyMismatchError, match="records spec"):
        key.identity.check(same_secret_other_spec)


@pytest.mark.parametrize("bad", [{}, {"spec": {}}, {"fingerprint": "xyz", "spec": None}, [], "x"])
def test_malformed_identity_is_a_clear_error(bad):
    with pytest.raises(IdentityError):
        Identity.from_dict(bad)


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(IdentityError, match="No disguise identity"):
        Identity.load(str(tmp_path))
    (tmp_path / "disguise.json").write_text("{not json")
    with pytest.raises(IdentityError, match="not valid JSON"):
        Identity.load(str(tmp_path))
