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


@dataclasses.dataclass(frozen=True)
class _Raw:
    """A byte pattern, made in full only when its head is found: a large key's encodings would not fit in memory."""

    what: str
    length: int
    head: bytes
    make: object  # () -> bytes


@dataclasses.dataclass(frozen=True)
class _Numbers:
    """Numbers to find in decimal text; `values` may be a view (a transposed matrix), flattened only when needed."""

    what: str
    values: np.ndarray
    anchor: int  # the flat index of the most distinctive (largest) value, the one searched for first
    target: float  # that value
    tolerance: float

    @classmethod
    def of(cls, what: str, values: np.ndarray) -> _Numbers:
        anchor = int(np.argmax(np.abs(values)))
        target = float(values[np.unravel_index(anchor, values.shape)])
        return cls(what, values, anchor, target, DECIMAL_RTOL * abs(target))


# Bytes of a pattern kept at hand: enough to choose its anchor and reject most false hits.
_HEAD = 264
# Elements looked at to decide that an array is too uniform to be secret.
_SAMPLE = 4096


@dataclasses.dataclass
class _Patterns:
    raw: list = dataclasses.field(default_factory=list)  # _Raw
    numbers: list = dataclasses.field(default_factory=list)  # _Numbers

    def add_bytes(self, what: str, blob: bytes) -> None:
        if len(blob) >= MIN_PATTERN_BYTES:
            blob = bytes(blob)
            self.raw.append(_Raw(what, len(blob), blob[:_HEAD], lambda: blob))

    def add_encoded(self, what: str, part: np.ndarray, dtype, *, array: bool) -> None:
        """`part` (any view) as `dtype`'s bytes, in C order (named "as a <dtype> array" or "as <dtype>")."""
        dtype = np.dtype(dtype)
        if part.size * dtype.itemsize < MIN_PATTERN_BYTES:
            return
        head = np.asarray(part.flat[:-(-_HEAD // dtype.itemsize)]).astype(dtype).tobytes()[:_HEAD]
        name = f"{what} as a {dtype.name} array" if array else f"{what} as {dtype.name}"
        self.raw.append(_Raw(name, part.size * dtype.itemsize, head,
                             lambda: np.ascontiguousarray(part, dtype).tobytes()))

    def add_byte_string(self, what: str, secret: bytes) -> None:
        """A byte string (the secret, an AES key) in every text and array encoding."""
        self.add_bytes(what, secret)
        self.add_bytes(f"{what} as base64", base64.b64encode(secret).rstrip(b"="))
        self.add_bytes(f"{what} as URL-safe base64", base64.urlsafe_b64encode(secret).rstrip(b"="))
        self.add_bytes(f"{what} as hex", secret.hex().encode())
        self.add_bytes(f"{what} as HEX", secret.hex().upper().encode())
        values = np.frombuffer(secret, np.uint8)
        for dtype in _INT_DTYPES:
            self.add_encoded(what, values, dtype, array=True)
        self.numbers.append(_Numbers.of(f"{what} as decimal numbers", values.astype(np.float64)))

    def add_array(self, what: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.dtype.kind in "iub":
            self._add_ints(what, array)
        elif array.dtype.kind == "f":
            self._add_floats(what, array)

    def _add_ints(self, what: str, array: np.ndarray) -> None:
        distinct = len(np.unique(array.reshape(-1)[:1 << 20]))
        if distinct < 2 or array.size * math.log2(distinct) < MIN_INT_BITS:
            return
        flat = array.reshape(-1)
        low, high = int(flat.min()), int(flat.max())
        dtypes = _INT_DTYPES + (("<u1",) if low >= 0 and high <= 255 else ()) + (
            ("<i1",) if low >= -128 and high <= 127 else ())
        for dtype in dtypes:
            self.add_encoded(what, flat, dtype, array=True)
        self.numbers.append(_Numbers.of(f"{what} as decimal numbers", flat))

    def _add_floats(self, what: str, array: np.ndarray) -> None:
        if len(np.unique(array.reshape(-1)[:_SAMPLE])) < 3:  # -I, a constant bias: public and common
            return
        parts = [(what, array)]
        if array.ndim == 3 and array.shape[1] == array.shape[2]:  # one matrix per block
            for i, m in enumerate(array):
                if len(np.unique(m.reshape(-1)[:_SAMPLE])) >= 4:
                    parts += [(f"{what}[{i}]", m), (f"{what}[{i}] transposed", m.T)]
        for name, part in parts:
            for dtype in _FLOAT_DTYPES:
                self.add_encoded(name, part, dtype, array=False)
            if part.size >= 8:
                self.numbers.append(_Numbers.of(f"{name} as decimal numbers", part))


# Above this many bytes of plan arrays, the step materials (float64, twice the plan's float32) are not derived
# again just for the scan: the plan's arrays, which a traced graph would hold, are still searched for.
MATERIALS_REDERIVE_BYTES = 64 * 2**20


def _key_patterns(key) -> _Patterns:
    patterns = _Patterns()
    patterns.add_byte_string("the secret", key.secret_bytes())
    plan_fields = []
    for i, op in enumerate(key.plan.ops):
        fields = [(f.name, getattr(op, f.name)) for f in dataclasses.fields(op)] if dataclasses.is_dataclass(op) \
            else list(vars(op).items())
        plan_fields += [(f"plan op {i} ({type(op).__name__}).{name}", value) for name, value in fields]
    plan_bytes = sum(a.nbytes for _, value in plan_fields for a in _arrays(value))
    fields = [(what, value, False) for what, value in plan_fields]
    if "materials" in vars(key) or plan_bytes <= MATERIALS_REDERIVE_BYTES:
        fields += [(f"step {i} ({step.name}) material", material, True)
                   for i, (step, material) in enumerate(zip(key.spec.steps, key.materials))]
    for what, value, numbered in fields:
        for j, array in enumerate(_arrays(value)):
            patterns.add_array(f"{what} {j}" if numbered or not isinstance(value, np.ndarray) else what, array)
        for j, blob in enumerate(_byte_strings(value)):
            patterns.add_byte_string(f"{what} {j}" if numbered or not isinstance(value, bytes) else what, blob)
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
        for raw in patterns.raw:
            offset = _anchor(raw.head)
            self._by_anchor[int.from_bytes(raw.head[offset:offset + 8], "little")].append((raw, offset))
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
                    for raw, offset in self._by_anchor[int(chunk[hit])]:
                        start = position - offset
                        if (raw.what not in found and start >= 0 and blob[start:start + len(raw.head)] == raw.head
                                and blob[start:start + raw.length] == raw.make()):
                            found.add(raw.what)
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
        for pattern in self._numbers:
            if pattern.what in found or pattern.values.size > len(values):
                continue
            low = bisect.bisect_left(ordered, pattern.target - pattern.tolerance)
            high = bisect.bisect_right(ordered, pattern.target + pattern.tolerance)
            flat = None
            for position in order[low:high]:
                start = int(position) - pattern.anchor
                window = values[start:start + pattern.values.size]
                if start < 0 or len(window) != pattern.values.size:
                    continue
                flat = pattern.values.reshape(-1) if flat is None else flat
                if np.allclose(window, flat, rtol=DECIMAL_RTOL, atol=pattern.tolerance):
                    found.add(pattern.what)
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
