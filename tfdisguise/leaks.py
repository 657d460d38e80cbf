"""Finding key material in what leaves the owner: bytes, files, directories.

The promise is that nothing the cloud receives (shards, manifests, SavedModels,
logs) holds the key. Checking the code paths that write those files is not
enough: a model can carry the key in a way the writer never anticipated (a
`Disguise` layer called inside a `Lambda`, a constant, a weight). So `export`
scans *what was written* with a `KeyScanner`, and the tests scan every other
artifact the same way.

What counts as key material:

- the 32-byte secret: raw, base64 (standard and URL-safe), hex (both cases),
  as an array of any int or float dtype (each byte one element), and as
  decimal text (a JSON list of ints, for one);
- every step's derived material (`Key.materials`) and the compiled plan's
  arrays (`Key.plan`, where steps fuse): int arrays (permutations, tables) in
  any int dtype and as floats, float arrays (matrices) as float16, float32 and
  float64, each matrix alone and transposed, and all of them as decimal text.

Arrays too uniform to be secret (the bias 255 of negative-positive, an
identity) or too short to be told from chance (a 4-block permutation) are not
searched for: they would match ordinary model data. A key whose only material
is that small cannot be recognised by content; `export` also refuses models
that reach a `Disguise` layer or a `Key` object, whatever the content.

>>> import numpy as np
>>> from tfdisguise import Key, Spec
>>> key = Key(bytes(range(32)), Spec.create((8, 8, 1), block_size=4))
>>> scanner = KeyScanner(key)
>>> scanner.find(b"model data" + key.secret_bytes().hex().encode())
['the secret as hex']
>>> scanner.find(("[" + ", ".join(map(str, key.secret_bytes())) + "]").encode())
['the secret as decimal numbers']
>>> scanner.find(b"ordinary model data")
[]
"""

from __future__ import annotations

import base64
import bisect
import collections
import dataclasses
import math
import mmap
import os
import re

import numpy as np

__all__ = ["KeyScanner", "scan_directory"]

# Shorter byte patterns occur by chance in large files.
MIN_PATTERN_BYTES = 16
# An int array is searched for only when it holds at least this many bits
# (length * log2(distinct values)): a 4-block permutation matches by chance.
MIN_INT_BITS = 64
# Decimal text: the relative tolerance covers float16 printed with 4 digits.
DECIMAL_RTOL = 1e-3
# A number, as JSON, Python or C print it.
_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# A run of at least 8 numbers with list punctuation between them.
_NUMBER_RUN = re.compile(rb"(?:" + _NUMBER + rb"[\s,;:\[\]()]+){7,}" + _NUMBER)
# Quick to find (no backtracking): where a number run may be; `_NUMBER_RUN` then looks inside.
_NUMBER_TEXT = re.compile(rb"[-+.]?[0-9][-+0-9eE.\s,;:\[\]()]{14,}")
_INT_DTYPES = ("<i2", "<i4", "<i8", ">i2", ">i4", ">i8", "<f2", "<f4", "<f8", ">f4", ">f8")
_FLOAT_DTYPES = ("<f2", "<f4", "<f8", ">f4", ">f8")


@dataclasses.dataclass
class _Patterns:
    raw: list = dataclasses.field(default_factory=list)  # (what, bytes)
    numbers: list = dataclasses.field(default_factory=list)  # (what, float64 array)

    def add_bytes(self, what: str, blob: bytes) -> None:
        if len(blob) >= MIN_PATTERN_BYTES:
            self.raw.append((what, bytes(blob)))

    def add_byte_string(self, what: str, secret: bytes) -> None:
        """A byte string (the secret, an AES key) in every text and array encoding."""
        self.add_bytes(what, secret)
        self.add_bytes(f"{what} as base64", base64.b64encode(secret).rstrip(b"="))
        self.add_bytes(f"{what} as URL-safe base64", base64.urlsafe_b64encode(secret).rstrip(b"="))
        self.add_bytes(f"{what} as hex", secret.hex().encode())
        self.add_bytes(f"{what} as HEX", secret.hex().upper().encode())
        values = np.frombuffer(secret, np.uint8)
        for dtype in _INT_DTYPES:
            self.add_bytes(f"{what} as a {np.dtype(dtype).name} array", values.astype(dtype).tobytes())
        self.numbers.append((f"{what} as decimal numbers", values.astype(np.float64)))

    def add_array(self, what: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.dtype.kind in "iub":
            self._add_ints(what, array)
        elif array.dtype.kind == "f":
            self._add_floats(what, array)

    def _add_ints(self, what: str, array: np.ndarray) -> None:
        distinct = len(np.unique(array))
        if distinct < 2 or array.size * math.log2(distinct) < MIN_INT_BITS:
            return
        flat = array.reshape(-1)
        dtypes = _INT_DTYPES if flat.min() < 0 or flat.max() > 255 else ("<u1",) + _INT_DTYPES
        if flat.min() >= -128 and flat.max() <= 127:
            dtypes = ("<i1",) + dtypes
        for dtype in dtypes:
            self.add_bytes(f"{what} as a {np.dtype(dtype).name} array", flat.astype(dtype).tobytes())
        self.numbers.append((f"{what} as decimal numbers", flat.astype(np.float64)))

    def _add_floats(self, what: str, array: np.ndarray) -> None:
        if len(np.unique(array)) < 3:  # -I, a constant bias: public and common
            return
        parts = [(what, array)]
        if array.ndim == 3 and array.shape[1] == array.shape[2]:  # one matrix per block
            for i, m in enumerate(array):
                if len(np.unique(m)) >= 4:
                    parts += [(f"{what}[{i}]", m), (f"{what}[{i}] transposed", m.T)]
        for name, part in parts:
            for dtype in _FLOAT_DTYPES:
                self.add_bytes(f"{name} as {np.dtype(dtype).name}", np.ascontiguousarray(part, dtype).tobytes())
            if part.size >= 8:
                self.numbers.append((f"{name} as decimal numbers", part.reshape(-1).astype(np.float64)))


def _key_patterns(key) -> _Patterns:
    patterns = _Patterns()
    patterns.add_byte_string("the secret", key.secret_bytes())
    for i, (step, material) in enumerate(zip(key.spec.steps, key.materials)):
        for j, array in enumerate(_arrays(material)):
            patterns.add_array(f"step {i} ({step.name}) material {j}", array)
        for j, blob in enumerate(_byte_strings(material)):
            patterns.add_byte_string(f"step {i} ({step.name}) key {j}", blob)
    for i, op in enumerate(key.plan.ops):
        fields = [(f.name, getattr(op, f.name)) for f in dataclasses.fields(op)] if dataclasses.is_dataclass(op) \
            else list(vars(op).items())
        for name, value in fields:
            what = f"plan op {i} ({type(op).__name__}).{name}"
            for array in _arrays(value):
                patterns.add_array(what, array)
            for blob in _byte_strings(value):
                patterns.add_byte_string(what, blob)
    return patterns


def _arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays(item)


def _byte_strings(value):
    if isinstance(value, (bytes, bytearray)):
        yield bytes(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _byte_strings(item)


def _anchor(pattern: bytes) -> int:
    """The offset of the pattern's most varied 8 bytes: the word that is searched for first."""
    best, best_distinct = 0, -1
    for offset in range(min(len(pattern) - 7, 256)):
        distinct = len(set(pattern[offset:offset + 8]))
        if distinct > best_distinct:
            best, best_distinct = offset, distinct
    return best


class KeyScanner:
    """Finds `key`'s material in bytes. Build once per key: it precomputes every encoding.

    Byte patterns are found through one 8-byte anchor word each, searched for
    at all 8 alignments with numpy, and then compared in full; so the cost
    hardly grows with the number of patterns (thousands, for a large key).
    """

    # Words compared per numpy call: bounds the scanner's own memory.
    _CHUNK_WORDS = 1 << 22

    def __init__(self, key):
        patterns = _key_patterns(key)
        self._by_anchor = collections.defaultdict(list)
        for what, blob in patterns.raw:
            offset = _anchor(blob)
            self._by_anchor[int.from_bytes(blob[offset:offset + 8], "little")].append((what, blob, offset))
        self._anchors = np.array(sorted(self._by_anchor), dtype=np.uint64)
        # The anchors' low 16 bits: a table lookup discards ~99% of words before the sorted search.
        self._low = np.zeros(1 << 16, bool)
        self._low[(self._anchors & np.uint64(0xFFFF)).astype(np.intp)] = True
        self._numbers = patterns.numbers

    def find(self, blob) -> list[str]:
        """What of the key `blob` (bytes, or any buffer) holds, as descriptions; [] when none."""
        found = self._find_bytes(blob)
        found.update(self._find_numbers(blob))
        return sorted(found)

    def _find_bytes(self, blob) -> set[str]:
        data = np.frombuffer(blob, np.uint8)
        found: set[str] = set()
        for shift in range(8):
            n = (len(data) - shift) // 8
            if n <= 0:
                break
            aligned = data[shift:shift + 8 * n]
            words, low = aligned.view("<u8"), aligned.view("<u2")[::4]
            for first in range(0, n, self._CHUNK_WORDS):
                candidates = first + np.flatnonzero(self._low[low[first:first + self._CHUNK_WORDS]])
                if not len(candidates):
                    continue
                chunk = words[candidates]
                index = np.minimum(np.searchsorted(self._anchors, chunk), len(self._anchors) - 1)
                for hit in np.flatnonzero(self._anchors[index] == chunk):
                    position = shift + 8 * int(candidates[hit])
                    for what, pattern, offset in self._by_anchor[int(chunk[hit])]:
                        start = position - offset
                        if what not in found and start >= 0 and blob[start:start + len(pattern)] == pattern:
                            found.add(what)
        return found

    def _find_numbers(self, blob) -> set[str]:
        runs = [_parse_numbers(m.group()) for text in _NUMBER_TEXT.finditer(blob)
                for m in _NUMBER_RUN.finditer(text.group())]
        if not runs:
            return set()
        # NaN between runs: a match never spans two of them.
        values = np.concatenate([np.append(run, np.nan) for run in runs])
        order = np.argsort(values)  # NaN sorts last
        ordered = values[order].tolist()
        found = set()
        for what, pattern in self._numbers:
            if len(pattern) > len(values):
                continue
            a = int(np.argmax(np.abs(pattern)))  # the most distinctive value, as the anchor
            tolerance = DECIMAL_RTOL * float(np.abs(pattern).max())
            low = bisect.bisect_left(ordered, pattern[a] - tolerance)
            high = bisect.bisect_right(ordered, pattern[a] + tolerance)
            for position in order[low:high]:
                start = int(position) - a
                window = values[start:start + len(pattern)]
                if start >= 0 and len(window) == len(pattern) and np.allclose(window, pattern, rtol=DECIMAL_RTOL,
                                                                             atol=tolerance):
                    found.add(what)
                    break
        return found


def _parse_numbers(run: bytes) -> np.ndarray:
    return np.array([float(t) for t in re.findall(_NUMBER, run)], dtype=np.float64)


def scan_directory(path: str, key, *, scanner: KeyScanner | None = None) -> dict[str, list[str]]:
    """{file relative to `path`: what it holds} for every file under `path` that holds `key`'s material.

    Reads local files through a memory map (a SavedModel's variables can be
    large) and remote ones (`gs://...`) through `tf.io.gfile`.
    """
    scanner = scanner or KeyScanner(key)
    found = {}
    if "://" in path:
        import tensorflow as tf

        for root, _, files in tf.io.gfile.walk(path):
            for name in files:
                full = root.rstrip("/") + "/" + name
                with tf.io.gfile.GFile(full, "rb") as f:
                    hits = scanner.find(f.read())
                if hits:
                    found[full[len(path.rstrip("/")) + 1:]] = hits
        return found
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            with open(full, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    continue
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
                    hits = scanner.find(blob)
            if hits:
                found[os.path.relpath(full, path)] = hits
    return found
