"""The public identity of a disguise: its spec plus the key's fingerprint.

This is everything about a key that may leave the owner. Disguised data sets,
training runs, exported models and the serving client all record or check the
same object, written in one format under one file name (`disguise.json`).

Example:

>>> import os, tempfile
>>> from tfdisguise.key import Key
>>> key = Key.generate(image_shape=(28, 28, 1))
>>> ident = key.identity
>>> Identity.from_dict(ident.to_dict()) == ident
True
>>> run = tempfile.mkdtemp()
>>> path = ident.save(run)
>>> os.path.basename(path)
'disguise.json'
>>> Identity.load(run).check(key)
>>> Identity.load(run).check(Key.generate(key.spec))
Traceback (most recent call last):
...
tfdisguise.identity.KeyMismatchError: ...
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tfdisguise.spec import Spec

__all__ = ["FILE_NAME", "Identity", "IdentityError", "KeyMismatchError"]

FILE_NAME = "disguise.json"


class KeyMismatchError(ValueError):
    """Data or a model was disguised with a different key or spec than the one given."""


class IdentityError(ValueError):
    """A recorded identity is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Spec + fingerprint: which disguise some data or a model expects.

    Args:
        spec: the public `Spec` (a dict is parsed).
        fingerprint: the key's public id, 16 hex characters.
    """

    spec: Spec
    fingerprint: str

    def __post_init__(self):
        spec = self.spec
        if isinstance(spec, dict):
            spec = Spec.from_dict(spec)
        if not isinstance(spec, Spec):
            raise IdentityError(f"`spec` must be a Spec or a spec dict. Received: spec={type(self.spec).__name__}")
        fp = str(self.fingerprint)
        if len(fp) != 16 or any(c not in "0123456789abcdef" for c in fp):
            raise IdentityError(f"`fingerprint` must be 16 lowercase hex characters. Received: {self.fingerprint!r}")
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "fingerprint", fp)

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: Any, source: str = "identity") -> Identity:
        if not isinstance(d, dict) or "fingerprint" not in d or "spec" not in d:
            raise IdentityError(f"{source} must hold 'fingerprint' and 'spec'. Received: {str(d)[:200]}")
        try:
            return cls(spec=d["spec"], fingerprint=d["fingerprint"])
        except ValueError as e:
            raise IdentityError(f"{source}: {e}") from None

    def describe(self) -> str:
        return f"key {self.fingerprint}, {self.spec.describe()}, image {self.spec.image_shape}"

    # ---- checks ---------------------------------------------------------------

    def check(self, key, what: str = "This data or model") -> None:
        """Raises KeyMismatchError unless `key` (a Key or Identity) is this identity."""
        other = key if isinstance(key, Identity) else key.identity
        if other.fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"{what} belongs to key {self.fingerprint}, but the key given is {other.fingerprint}. "
                "Use the key file it was made with."
            )
        if other.spec != self.spec:
            raise KeyMismatchError(
                f"{what} records spec '{self.spec.describe()}' {self.spec.image_shape}, but the key's spec is "
                f"'{other.spec.describe()}' {other.spec.image_shape}."
            )

    # ---- the one file format ----------------------------------------------------

    def save(self, directory: str) -> str:
        """Writes `directory/disguise.json` atomically and returns its path."""
        from tfdisguise import io

        path = os.path.join(os.fspath(directory), FILE_NAME)
        io.write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str) -> Identity:
        """Reads `disguise.json`, given the file or the directory that holds it."""
        from tfdisguise import io

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FILE_NAME)
        try:
            d = io.read_json(path, what="Identity file", error=IdentityError)
        except FileNotFoundError:
            raise IdentityError(f"No disguise identity at {path}.") from None
        except IdentityError:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise IdentityError(f"{path} is not valid JSON ({type(e).__name__}).") from None
        return cls.from_dict(d, source=path)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
