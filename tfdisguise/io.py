"""Atomic writes through `tf.io.gfile`: a reader never sees a half-written file.

Every writer in the package (key files, shards, exports, reports, figures) goes
through these helpers, so "write to a temporary name, then rename" lives in one
place. Paths may be local or any filesystem `tf.io.gfile` supports; local paths
get their parent directories created (with `dir_mode` for new ones).

Example:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "sub", "report.json")
>>> write_json(path, {"a": 1})
>>> read_json(path)
{'a': 1}
>>> write_text(path, "x", mode=0o600)
>>> oct(os.stat(path).st_mode & 0o777)
'0o600'
>>> [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp")]
[]
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_file",
    "is_local",
    "makedirs",
    "read_json",
    "write_bytes",
    "write_json",
    "write_text",
]


def is_local(path: str) -> bool:
    """True for plain filesystem paths (no `scheme://`)."""
    return "://" not in os.fspath(path)


def _gfile():
    import tensorflow as tf  # only for remote paths: local writes must not need TensorFlow

    return tf.io.gfile


def makedirs(path: str, mode: int = 0o777) -> None:
    """Creates `path` and missing parents; new local directories get `mode`."""
    path = os.fspath(path)
    if not path:
        return
    if is_local(path):
        os.makedirs(path, mode=mode, exist_ok=True)
    else:
        _gfile().makedirs(path)


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) if is_local(path) else path.rsplit("/", 1)[0]


@contextlib.contextmanager
def atomic_file(path: str, mode: int | None = None, binary: bool = False, dir_mode: int = 0o777) -> Iterator:
    """Yields a file object; on success its content replaces `path` in one rename.

    `mode` sets the permission bits of a local file before any byte is written
    (0o600 for key files). On failure the temporary file is removed and `path`
    is left as it was.
    """
    path = os.fspath(path)
    directory = _parent(path)
    makedirs(directory, dir_mode)
    if is_local(path):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb" if binary else "w") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    gfile = _gfile()
    tmp = f"{directory}/.tmp-{secrets.token_hex(6)}.partial"
    try:
        with gfile.GFile(tmp, "wb" if binary else "w") as f:
            yield f
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise


def write_text(path: str, text: str, mode: int | None = None, dir_mode: int = 0o777) -> None:
    with atomic_file(path, mode=mode, dir_mode=dir_mode) as f:
        f.write(text)


def write_bytes(path: str, data: bytes, mode: int | None = None) -> None:
    with atomic_file(path, mode=mode, binary=True) as f:
        f.write(data)


def write_json(path: str, obj: Any, mode: int | None = None) -> None:
    """Pretty JSON (2-space indent, trailing newline), written atomically.

    NaN and infinities are refused rather than written as invalid JSON.
    """
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n", mode=mode)


def read_json(path: str) -> Any:
    path = os.fspath(path)
    if is_local(path):
        with open(path) as f:
            return json.load(f)
    with _gfile().GFile(path) as f:
        return json.loads(f.read())


@contextlib.contextmanager
def atomic_dir(path: str, *, replace: bool = False) -> Iterator[str]:
    """Yields a temporary sibling directory that is renamed to `path` on success.

    Readers see either the old `path` (or nothing) or the finished directory,
    never a partial one. With `replace=True` an existing `path` is swapped out
    and removed after the new one is in place; otherwise an existing `path`
    raises FileExistsError before anything is written. Deciding *whether* a
    directory may be replaced is the caller's job.
    """
    path = os.fspath(path).rstrip("/")
    exists = os.path.exists(path) if is_local(path) else _gfile().exists(path)
    if exists and not replace:
        raise FileExistsError(f"{path} already exists.")
    parent = _parent(path)
    makedirs(parent)
    base = os.path.basename(path)
    tmp = f"{parent}/.{base}.tmp-{secrets.token_hex(4)}"
    gfile = None if is_local(path) else _gfile()
    try:
        makedirs(tmp)
        yield tmp
        if exists:
            old = f"{parent}/.{base}.old-{secrets.token_hex(4)}"
            _rename(path, old, gfile)
            _rename(tmp, path, gfile)
            _rmtree(old, gfile)
        else:
            _rename(tmp, path, gfile)
    except BaseException:
        if (os.path.exists(tmp) if gfile is None else gfile.exists(tmp)):
            _rmtree(tmp, gfile)
        raise


def _rename(src, dst, gfile):
    if gfile is None:
        os.rename(src, dst)
    else:
        gfile.rename(src, dst)


def _rmtree(path, gfile):
    if gfile is None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        gfile.rmtree(path)
