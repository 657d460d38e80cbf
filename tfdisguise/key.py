"""The owner's secret key: generation, derivation, fingerprint and key files.

A key is 32 random bytes plus the public spec. Every step's secret material
(permutation, matrices) is derived from the secret with HMAC-SHA256 under a
per-step label and seeds a numpy `Generator`, so the same key file gives the same
matrices in every process.

Example:

>>> import os, tempfile
>>> key = Key.generate(Spec.create((28, 28, 1), block_size=7, noise=100))
>>> len(key.fingerprint)
16
>>> path = os.path.join(tempfile.mkdtemp(), "key.json")
>>> key.save(path)
>>> oct(os.stat(path).st_mode & 0o777)
'0o600'
>>> Key.load(path).fingerprint == key.fingerprint
True
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
from typing import Any

import numpy as np

from tfdisguise import io
from tfdisguise.identity import Identity, KeyMismatchError
from tfdisguise.spec import Spec

__all__ = ["Key", "KeyFileError", "KeyMismatchError"]

FORMAT = "tfdisguise.key"
VERSION = 1
SECRET_BYTES = 32
MAX_KEY_FILE_BYTES = 64 << 10  # a key file is about 1 KiB; anything far larger is not one


def _check_fits_in_memory(spec: Spec) -> None:
    # A key file may hold a spec that Spec.create would refuse (written with a
    # raised cap, or by hand): refuse to derive what this machine cannot hold,
    # before allocating it.
    from tfdisguise.mechanisms.cost import check_plan_size, physical_memory_bytes

    check_plan_size(spec, physical_memory_bytes(), what="this machine's memory")


class KeyFileError(ValueError):
    """A key file is missing, corrupt, tampered with, or unsafe to use."""


def _hmac(secret: bytes, label: str) -> bytes:
    return hmac.new(secret, label.encode("utf-8"), hashlib.sha256).digest()


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Key:
    """A secret plus its public spec. Create with `generate` or `load`.

    The secret is never printed, pickled or put in a config; `fingerprint` is the
    public id (HMAC(secret, "fingerprint"), 16 hex characters) that disguised
    data sets and exported models record.
    """

    def __init__(self, secret: bytes, spec: Spec):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
            length = len(secret) if hasattr(secret, "__len__") else "?"
            raise ValueError(
                f"`secret` must be {SECRET_BYTES} bytes. Received: {type(secret).__name__} of length {length}"
            )
        if not isinstance(spec, Spec):
            raise TypeError(f"`spec` must be a tfdisguise Spec. Received: {type(spec).__name__}")
        self._secret = bytes(secret)
        self._spec = spec

    @classmethod
    def generate(cls, spec: Spec | None = None, **spec_kwargs) -> Key:
        """A fresh key from the OS's CSPRNG.

        Pass a `Spec`, or an `image_shape` and optionally `Spec.create`
        arguments: what they leave open is the recommended setting for the
        shape (`Spec.recommended`, what `tfdisguise keygen` writes), never a
        weaker one.

        >>> Key.generate(image_shape=(28, 28, 1)).spec == Spec.recommended((28, 28, 1))
        True
        >>> Key.generate(image_shape=(28, 28, 1), noise=0).spec.describe()
        'block 7x7: block_scramble(per-position) > permute'
        """
        if spec is None:
            spec = Spec.recommended(**spec_kwargs)
        elif spec_kwargs:
            raise TypeError("Pass either `spec` or Spec.create arguments, not both.")
        return cls(secrets.token_bytes(SECRET_BYTES), spec)

    @property
    def spec(self) -> Spec:
        return self._spec

    @functools.cached_property
    def fingerprint(self) -> str:
        return _hmac(self._secret, "fingerprint").hex()[:16]

    @functools.cached_property
    def identity(self) -> Identity:
        """The public part of this key (spec + fingerprint): safe to record anywhere."""
        return Identity(spec=self._spec, fingerprint=self.fingerprint)

    def secret_bytes(self) -> bytes:
        """The raw secret. Owner-side only (the `Disguise` layer saves it as its weight)."""
        return self._secret

    def derive(self, label: str) -> np.random.Generator:
        """A numpy Generator seeded by HMAC-SHA256(secret, label)."""
        seed = int.from_bytes(_hmac(self._secret, "tfdisguise/v1/" + label), "big")
        return np.random.Generator(np.random.PCG64(seed))

    @functools.cached_property
    def materials(self) -> tuple:
        """Each step's secret material (permutation, matrices), in pipeline order.

        Owner-side only: this *is* key material.
        """
        _check_fits_in_memory(self._spec)
        return tuple(step.material(self._step_rng(i, step), self._spec) for i, step in enumerate(self._spec.steps))

    def _step_rng(self, i: int, step) -> np.random.Generator | None:
        return self.derive(f"step/{i}/{step.name}") if step.keyed else None

    @functools.cached_property
    def plan(self):
        """The spec compiled with this key's material (see `mechanisms.Plan`).

        Built from each step's `plan_material` (RMT: float32, drawn without a
        float64 copy of every matrix) unless `materials` was already derived;
        either way it holds the same values.
        """
        from tfdisguise.mechanisms import Plan

        _check_fits_in_memory(self._spec)
        derived = self.__dict__.get("materials")
        steps = self._spec.steps

        def ops():
            # A generator, so that the plan fuses each op as it comes and a large
            # unfused one is freed at once.
            for i, step in enumerate(steps):
                m = derived[i] if derived is not None else step.plan_material(self._step_rng(i, step), self._spec)
                yield step.build(m, self._spec)

        # Freshly derived material belongs to the plan alone; cached material is shared with `materials`.
        return Plan.compile(self._spec, ops(), owned=derived is None)

    def check_matches(self, identity: Identity, what: str) -> None:
        """Raises KeyMismatchError unless `what` (recorded as `identity`) was made with this key."""
        identity.check(self, what)

    # ---- key files -------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "spec": self._spec.to_dict()}

    def _mac(self, header: dict[str, Any]) -> str:
        # Covers the spec too: the fingerprint alone would not catch an edited spec.
        return hmac.new(self._secret, _canonical(header), hashlib.sha256).hexdigest()

    def to_json(self) -> str:
        header = self._header()
        body = dict(header, secret=base64.b64encode(self._secret).decode("ascii"), mac=self._mac(header))
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    def save(self, path: str, *, overwrite: bool = False) -> None:
        """Writes the key file atomically (temp file + rename) with mode 0600.

        Refuses to replace an existing file unless `overwrite=True`: losing a key
        makes everything disguised with it unusable. Missing parent directories
        are created with mode 0700.
        """
        path = os.fspath(path)
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"Key file {path} already exists; refusing to overwrite it (pass overwrite=True).")
        io.write_text(path, self.to_json(), mode=0o600, dir_mode=0o700)

    @classmethod
    def load(cls, path: str) -> Key:
        """Reads and verifies a key file; refuses unsafe, corrupt or tampered files.

        Only a regular file of at most `MAX_KEY_FILE_BYTES`, private to its
        owner, is read. The file is opened without blocking and checked on the
        open descriptor, so a FIFO or a device never hangs the caller, and what
        is checked is what is read. Every failure is a `KeyFileError`.
        """
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyFileError(f"Key file {path} does not exist.") from None
        except OSError as e:
            raise KeyFileError(f"Key file {path} cannot be opened: {e.strerror or e}.") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"Key file {path} is {_file_kind(st.st_mode)}, not a regular file; pass the path "
                                   f"of the key file that `tfdisguise keygen` wrote.")
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileError(
                    f"Key file {path} is accessible by group or others (mode {oct(st.st_mode & 0o777)}); "
                    f"it must be private. Run: chmod 600 {path}"
                )
            if st.st_size > MAX_KEY_FILE_BYTES:
                raise KeyFileError(f"Key file {path} is {st.st_size} bytes; a key file is at most "
                                   f"{MAX_KEY_FILE_BYTES} bytes, so this is not one.")
            f = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            try:
                raw = f.read(MAX_KEY_FILE_BYTES + 1)  # the file may have grown since fstat
            except OSError as e:
                raise KeyFileError(f"Key file {path} cannot be read: {e.strerror or e}.") from None
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"Key file {path} is over {MAX_KEY_FILE_BYTES} bytes, so it is not a key file.")
        return cls.from_json(raw, source=path)

    @classmethod
    def from_json(cls, raw: bytes | str, source: str = "key") -> Key:
        """Parses and verifies a key file's content; every failure is a `KeyFileError` naming `source`."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise KeyFileError(f"{source} is not a valid key file: corrupt or truncated JSON ({e}).") from None
        except RecursionError:
            raise KeyFileError(f"{source} is not a valid key file: its JSON is nested too deeply.") from None
        if not isinstance(body, dict):
            raise KeyFileError(f"{source} is not a valid key file: expected a JSON object.")
        if body.get("format") != FORMAT:
            raise KeyFileError(f"{source} is not a tfdisguise key file (format={body.get('format')!r}, "
                               f"expected {FORMAT!r}).")
        if body.get("version") != VERSION:
            raise KeyFileError(f"{source} has key format version {body.get('version')!r}; "
                               f"this tfdisguise reads version {VERSION}.")
        missing = {"secret", "spec", "fingerprint", "mac"} - set(body)
        if missing:
            raise KeyFileError(f"{source} is missing {sorted(missing)}.")
        for field in ("secret", "fingerprint", "mac"):
            if not isinstance(body[field], str):
                raise KeyFileError(f"{source}: `{field}` must be a string, found {type(body[field]).__name__} "
                                   f"(corrupt file).")
        if not isinstance(body["spec"], dict):
            raise KeyFileError(f"{source}: `spec` must be a JSON object, found {type(body['spec']).__name__} "
                               f"(corrupt file).")
        try:
            secret = base64.b64decode(body["secret"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise KeyFileError(f"{source}: the secret is not valid base64 (corrupt file).") from None
        if len(secret) != SECRET_BYTES:
            raise KeyFileError(f"{source}: the secret must be {SECRET_BYTES} bytes, found {len(secret)} "
                               f"(corrupt file).")
        try:
            spec = Spec.from_dict(body["spec"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise KeyFileError(f"{source}: invalid spec ({type(e).__name__}: {e}).") from None
        key = cls(secret, spec)
        if not hmac.compare_digest(body["fingerprint"], key.fingerprint):
            raise KeyFileError(f"{source}: fingerprint does not match the secret; the file was tampered with "
                               f"or corrupted.")
        header = {k: body[k] for k in ("format", "version", "fingerprint", "spec")}
        try:
            expected_mac = key._mac(header)
        except (ValueError, TypeError, RecursionError) as e:  # a spec that JSON cannot write back canonically
            raise KeyFileError(f"{source}: invalid header ({e}).") from None
        if not hmac.compare_digest(body["mac"], expected_mac):
            raise KeyFileError(f"{source}: integrity check failed; the spec or header was tampered with.")
        return key

    # ---- never leak -------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Key(fingerprint={self.fingerprint!r}, spec={self._spec.describe()!r})"

    def __getstate__(self):
        raise TypeError("tfdisguise.Key cannot be pickled: key material must not leave the owner.")

    def __eq__(self, other) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._secret, other._secret) and self._spec == other._spec

    def __hash__(self) -> int:
        return hash(self.fingerprint)
