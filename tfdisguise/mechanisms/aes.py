"""AES: keyed AES-ECB over each pixel block, the authors' mechanism against level-2 attackers.

What is encrypted, exactly:

- Each block of bh x bw x C pixels is read as d = bh*bw*C bytes, in the block
  layout's order (row, column, channel), one uint8 pixel per byte. Input values
  are rounded and clipped to 0..255 first, so the step belongs where the pixels
  are still whole numbers: before RMT and before noise (`validate` refuses
  anything else).
- Those bytes are cut into 16-byte units and each unit is encrypted with AES-256
  in ECB mode, one AES key for every block position and every image.
- When d is not a multiple of 16 (d = 16m + r, m >= 1, 0 < r < 16), the short
  tail is handled by ciphertext stealing on top of ECB, so that the ciphertext
  has exactly d bytes and the disguised image keeps its shape: the last full
  unit's ciphertext E is split into its first r bytes (which become the block's
  last r output bytes) and the rest; the rest, after the tail's r plaintext
  bytes, is encrypted as unit m - 1. A block of fewer than 16 bytes cannot be
  encrypted by a 128-bit block cipher without growing, so such a geometry is
  refused (MNIST needs blocks of at least 4x4, CIFAR-10 at least 3x3 with RGB).
- The output bytes are the disguised pixels, as float32 values in 0..255, so
  the result is still an image that a model can train on.
- `undisguise` decrypts exactly.

The AES key is 32 bytes drawn from the step's generator, which the key derives
from its secret with HMAC-SHA256 under the step's label (see `Key.derive`): the
key file holds everything needed, and the AES key is never stored anywhere.

AES itself comes from the `cryptography` package; only the ciphertext stealing
around it is written here. The op runs through the numpy escape hatch
(`numpy_bridge.py`): in `tf.data` and in the `Disguise` layer through
`tf.numpy_function`, so a pipeline with AES cannot be compiled by XLA.

What ECB leaks, by design: identical 16-byte plaintext units give identical
ciphertext units, at every block position and in every image. MNIST's
background is one such unit repeated, so every all-black block has the same
ciphertext, and the layout of the digit shows through as the blocks that
differ from it (`ecb_leak_map` measures it). With noise after AES,
`undisguise` cannot recover the pixels: decrypting a perturbed ciphertext
scrambles the whole unit.

Example:

>>> from tfdisguise.key import Key
>>> from tfdisguise.mechanisms import disguise, undisguise
>>> from tfdisguise.spec import Spec
>>> key = Key(bytes(32), Spec.create((8, 8, 1), block_size=4, rmt=None, permute=False, aes=True))
>>> key.spec.describe()
'block 4x4: aes'
>>> x = np.zeros((2, 8, 8, 1), "uint8")
>>> y = disguise(x, key)
>>> bool(np.array_equal(y[0, :4, :4], y[1, 4:, 4:]))  # ECB: identical blocks, identical ciphertext
True
>>> bool(np.array_equal(undisguise(y, key), x))
True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from keras import ops

from tfdisguise.mechanisms.op import Op
from tfdisguise.mechanisms.reference import join_blocks, split_blocks
from tfdisguise.spec import Step, register_step

__all__ = ["AES", "AESBlocks", "ecb_leak_map"]

UNIT = 16  # bytes in one AES block
KEY_BYTES = 32  # AES-256


def _cipher(key: bytes):
    # Imported here: only keys that use AES need the `cryptography` package loaded.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.ECB())


def _ecb(key: bytes, units: np.ndarray, decrypt: bool) -> np.ndarray:
    """AES-ECB over the rows of `units` ([n, 16k] uint8), in one call into `cryptography`."""
    if units.size == 0:
        return units
    cipher = _cipher(key)
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    out = context.update(np.ascontiguousarray(units).tobytes()) + context.finalize()
    return np.frombuffer(out, dtype=np.uint8).reshape(units.shape)


def encrypt_rows(key: bytes, rows: np.ndarray) -> np.ndarray:
    """Encrypts each row of `rows` ([n, d] uint8, d >= 16): AES-ECB with ciphertext stealing for the tail."""
    n, d = rows.shape
    m, r = divmod(d, UNIT)
    full = _ecb(key, rows[:, : m * UNIT], decrypt=False)
    if r == 0:
        return full
    last = full[:, (m - 1) * UNIT :]  # E of the last full unit
    stolen = _ecb(key, np.concatenate([rows[:, m * UNIT :], last[:, r:]], axis=1), decrypt=False)
    return np.concatenate([full[:, : (m - 1) * UNIT], stolen, last[:, :r]], axis=1)


def decrypt_rows(key: bytes, rows: np.ndarray) -> np.ndarray:
    """The inverse of `encrypt_rows`."""
    n, d = rows.shape
    m, r = divmod(d, UNIT)
    if r == 0:
        return _ecb(key, rows, decrypt=True)
    stolen = _ecb(key, rows[:, (m - 1) * UNIT : m * UNIT], decrypt=True)  # tail plaintext + rest of E
    last = np.concatenate([rows[:, m * UNIT :], stolen[:, r:]], axis=1)
    head = _ecb(key, np.concatenate([rows[:, : (m - 1) * UNIT], last], axis=1), decrypt=True)
    return np.concatenate([head, stolen[:, :r]], axis=1)


def _pixels(x) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class AESBlocks(Op):
    """Encrypts (or, with `decrypt=True`, decrypts) every block in block layout `[t, N, d]`.

    Args:
        key: the 32-byte AES key (key material: this op never prints it).
        decrypt: False to encrypt, True for the inverse.
    """

    key: bytes
    decrypt: bool = False

    layout: ClassVar[str] = "blocks"
    backend: ClassVar[str] = "numpy"

    def check(self, spec) -> None:
        if spec.block_dim < UNIT:
            raise ValueError(_too_small(spec))

    def __call__(self, blocks, uniform=None, dtype="float32"):
        blocks = _pixels(blocks)
        rows = blocks.reshape(-1, blocks.shape[-1])
        out = (decrypt_rows if self.decrypt else encrypt_rows)(self.key, rows)
        return out.reshape(blocks.shape).astype(dtype)

    def inverse(self) -> AESBlocks:
        return AESBlocks(self.key, not self.decrypt)


def _too_small(spec) -> str:
    return (f"`aes` encrypts each block as 16-byte AES units, so a block must hold at least 16 bytes "
            f"(bh*bw*C >= 16). Received: block_size={spec.block_size} on images {spec.image_shape}, "
            f"d = {spec.block_dim} bytes")


@register_step
@dataclasses.dataclass(frozen=True)
class AES(Step):
    """Keyed AES-256-ECB over each pixel block (see the module docstring for exactly what is encrypted).

    Not linear, and exactly invertible by the owner. It must come before RMT and
    noise, which make pixel values that are no longer bytes.
    """

    name: ClassVar[str] = "aes"
    linear: ClassVar[bool] = False

    def validate(self, spec) -> None:
        if spec.block_dim < UNIT:
            raise ValueError(_too_small(spec))
        index = next(i for i, s in enumerate(spec.steps) if s is self)
        blocking = [s.describe() for s in spec.steps[:index] if s.name == "rmt" or s.adds_noise]
        if blocking:
            raise ValueError(
                f"`aes` encrypts uint8 pixels, so it must come before RMT and noise steps, which make values that "
                f"are not bytes. Received steps: {[s.describe() for s in spec.steps]}"
            )

    def material(self, rng, spec) -> np.ndarray:
        """The AES-256 key: 32 bytes from the step's HMAC-derived generator."""
        return np.frombuffer(rng.bytes(KEY_BYTES), dtype=np.uint8).copy()

    def build(self, material, spec) -> AESBlocks:
        return AESBlocks(key=bytes(np.asarray(material, dtype=np.uint8)))

    def reference(self, image, material, spec, rng):
        # One block and one AES unit at a time, through fresh `cryptography` contexts.
        key = bytes(np.asarray(material, dtype=np.uint8))
        out = []
        for block in split_blocks(_pixels(image), *spec.block_size):
            data = block.reshape(-1).tobytes()
            m, r = divmod(len(data), UNIT)
            units = [_encrypt_unit(key, data[i * UNIT:(i + 1) * UNIT]) for i in range(m)]
            if r:
                last = units[-1]
                units[-1] = _encrypt_unit(key, data[m * UNIT:] + last[r:])
                units.append(last[:r])
            cipher = np.frombuffer(b"".join(units), dtype=np.uint8)
            out.append(cipher.reshape(block.shape).astype(np.float64))
        return join_blocks(out, spec)


def _encrypt_unit(key: bytes, unit: bytes) -> bytes:
    context = _cipher(key).encryptor()
    return context.update(unit) + context.finalize()


def ecb_leak_map(disguised, spec) -> np.ndarray:
    """What ECB shows without the key: for each image and block, True where the block's ciphertext
    equals the most common ciphertext block of the whole set (for MNIST: an empty background block).

    Returns [N, gh, gw] booleans, a thumbnail of where the images are empty. A
    measurement of the leak, needing no key, no pairs and no public data.

    >>> from tfdisguise.key import Key
    >>> from tfdisguise.mechanisms import disguise
    >>> from tfdisguise.spec import Spec
    >>> key = Key(bytes(32), Spec.create((8, 8, 1), block_size=4, rmt=None, permute=False, aes=True))
    >>> x = np.zeros((1, 8, 8, 1), "uint8"); x[0, 5, 5] = 255  # a dot in the bottom-right block
    >>> ecb_leak_map(disguise(x, key), key.spec)[0].tolist()
    [[True, True], [True, False]]
    """
    from tfdisguise.mechanisms.layout import to_blocks

    blocks = ops.convert_to_numpy(to_blocks(_pixels(disguised), spec))  # [t, N, d]
    t, n, d = blocks.shape
    rows = blocks.reshape(t * n, d)
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    common = inverse.reshape(-1) == np.argmax(counts)
    return common.reshape(t, n).T.reshape(n, *spec.grid)
