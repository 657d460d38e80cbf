"""The `aes` step: AES-256-ECB per pixel block, with ciphertext stealing, through the numpy escape hatch."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key

from tfdisguise import Disguise, Key, Spec, disguise, export_disguised, load_disguised, undisguise, wrap
from tfdisguise.mechanisms.aes import AES, decrypt_rows, ecb_leak_map, encrypt_rows
from tfdisguise.mechanisms.reference import disguise_batch


def aes_key(shape=(14, 14, 1), block=7, seed=0, **kwargs):
    kwargs = {"rmt": None, "aes": True, **kwargs}
    return make_key(seed, image_shape=shape, block_size=block, **kwargs)


def test_aes_256_known_answer():
    # FIPS-197, appendix C.3: AES-256 on one block.
    key = bytes(range(32))
    plain = np.frombuffer(bytes.fromhex("00112233445566778899aabbccddeeff"), np.uint8)[None]
    assert encrypt_rows(key, plain).tobytes().hex() == "8ea2b7ca516745bfeafc49904b496089"


@pytest.mark.parametrize("d", [16, 17, 31, 32, 48, 49, 75])
def test_ciphertext_stealing_keeps_length_and_inverts(rng, d):
    key = rng.bytes(32)
    rows = rng.integers(0, 256, (9, d), dtype=np.uint8)
    rows[3] = rows[0]
    enc = encrypt_rows(key, rows)
    assert enc.shape == rows.shape and enc.dtype == np.uint8
    np.testing.assert_array_equal(decrypt_rows(key, enc), rows)
    np.testing.assert_array_equal(enc[3], enc[0])  # deterministic: ECB
    assert not np.array_equal(enc, rows)
    # Units before the stolen one are plain ECB of the same 16 bytes.
    m = d // 16
    full = (m - 1 if d % 16 else m) * 16
    np.testing.assert_array_equal(enc[:, :full], encrypt_rows(key, rows[:, :full]) if full else enc[:, :0])


def test_one_changed_byte_changes_its_whole_unit_only(rng):
    key = rng.bytes(32)
    rows = rng.integers(0, 256, (1, 48), dtype=np.uint8)
    changed = rows.copy()
    changed[0, 20] ^= 1
    diff = encrypt_rows(key, rows) != encrypt_rows(key, changed)
    assert not diff[0, :16].any() and not diff[0, 32:].any() and diff[0, 16:32].sum() >= 12


@pytest.mark.parametrize("shape, block", [((14, 14, 1), 7), ((8, 8, 3), 4), ((12, 12, 3), (3, 6))])
def test_matches_the_per_block_reference_and_undisguise_is_exact(rng, shape, block):
    key = aes_key(shape, block, permute=True)
    assert [s.name for s in key.spec.steps] == ["aes", "permute"]
    assert not key.spec.is_linear and key.plan.runs_numpy and key.plan.exact_inverse
    x = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    y = disguise(x, key)
    np.testing.assert_array_equal(y, disguise_batch(x, key.spec, key.materials))
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 255 and np.array_equal(y, np.rint(y))
    np.testing.assert_array_equal(undisguise(y, key), x)
    assert abs(float(y.mean()) - 127.5) < 10  # ciphertext bytes look uniform


def test_the_aes_key_comes_from_the_key_secret():
    a, b = aes_key(seed=1), aes_key(seed=2)
    assert a.materials[0].shape == (32,) and a.materials[0].dtype == np.uint8
    np.testing.assert_array_equal(a.materials[0], aes_key(seed=1).materials[0])
    assert not np.array_equal(a.materials[0], b.materials[0])
    x = np.zeros((1, 14, 14, 1), np.uint8)
    assert not np.array_equal(disguise(x, a), disguise(x, b))


def test_key_file_holds_everything_needed(rng, tmp_path):
    key = aes_key(permute=True, scramble="per_position")
    x = rng.integers(0, 256, (4, 14, 14, 1), dtype=np.uint8)
    key.save(str(tmp_path / "key.json"))
    np.save(tmp_path / "y.npy", disguise(x, key))
    # A fresh process with nothing but the key file and the disguised images gets the pixels back.
    code = ("import sys, numpy as np; from tfdisguise import Key, undisguise; "
            "k = Key.load(sys.argv[1]); np.save(sys.argv[3], undisguise(np.load(sys.argv[2]), k))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "key.json"), str(tmp_path / "y.npy"),
                    str(tmp_path / "x.npy")], check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)
    with open(tmp_path / "key.json") as f:
        assert '"name": "aes"' in f.read()


def test_wrap_layer_and_shards_round_trip(rng, tmp_path):
    key = aes_key(permute=True)
    x = rng.integers(0, 256, (5, 14, 14, 1), dtype=np.uint8)
    want = disguise(x, key)
    wrapped = wrap(tf.data.Dataset.from_tensor_slices((x, np.arange(5))).batch(2), key)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b, _ in wrapped]), want)
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key)])
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)
    out = str(tmp_path / "upload")
    export_disguised(tf.data.Dataset.from_tensor_slices((x, np.arange(5) % 2)), key, out, shard_size=2,
                     progress=False)
    shards, labels = next(iter(load_disguised(out, key=key).batch(5)))
    np.testing.assert_array_equal(shards.numpy(), want)
    np.testing.assert_array_equal(undisguise(shards.numpy(), key), x)


def test_ecb_leaks_where_the_background_is(rng):
    # MNIST-like: a dark background with a bright stroke in some blocks.
    key = aes_key((28, 28, 1), 4, permute=False)
    x = np.zeros((20, 28, 28, 1), np.uint8)
    for i in range(20):
        r, c = rng.integers(4, 20, 2)
        x[i, r:r + 6, c:c + 2] = rng.integers(100, 256)
    y = disguise(x, key)
    empty = ~x.reshape(20, 7, 4, 7, 4).any(axis=(2, 4))
    np.testing.assert_array_equal(ecb_leak_map(y, key.spec), empty)
    # Every empty block is one and the same ciphertext, at every position and in every image.
    blocks = y.reshape(20, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(20, 49, 16)
    assert len(np.unique(blocks[empty.reshape(20, 49)], axis=0)) == 1


def test_refuses_what_it_cannot_encrypt_exactly():
    with pytest.raises(ValueError, match=r"at least 16 bytes .*block_size=\(2, 2\).*d = 12 bytes"):
        Spec.create((8, 8, 3), 2, rmt=None, aes=True)
    with pytest.raises(ValueError, match="must come before RMT and noise"):
        Spec((8, 8, 1), 4, steps=[{"name": "rmt"}, {"name": "aes"}])
    with pytest.raises(ValueError, match="must come before RMT and noise"):
        Spec.create((8, 8, 1), 4, rmt=None, aes=True, noise=10, noise_position="before")
    # After AES, RMT and noise are allowed (the bytes are encrypted before they change).
    spec = Spec.create((8, 8, 1), 4, aes=True, noise=10)
    assert spec.describe() == "block 4x4: aes > rmt(orthogonal,matrix) > permute > noise(10)"
    assert Spec.from_dict(spec.to_dict()) == spec and spec.has(AES) and spec.has("aes")


def test_key_repr_and_op_repr_hold_no_key():
    key = aes_key()
    op = key.plan.ops[0]
    assert bytes(key.materials[0]).hex() not in repr(op) + repr(key)
    assert repr(op) == "AESBlocks(layout='blocks', backend='numpy')"


def test_generated_keys_work_too(rng):
    key = Key.generate(Spec.create((16, 16, 1), 4, rmt=None, aes=True))
    x = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    np.testing.assert_array_equal(undisguise(disguise(x, key), key), x)
