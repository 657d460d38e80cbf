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
import stat
import tempfile
from collections.abc import Collection, Iterator
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_regular_file",
    "is_local",
    "makedirs",
    "open_regular",
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


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def _check_inside(path: str, inside: str, what: str, error: type[Exception]) -> None:
    """Refuses a local `path` that resolves (through symlinks) to somewhere outside the directory `inside`."""
    real, base = os.path.realpath(path), os.path.realpath(inside)
    if os.path.commonpath([real, base]) != base:
        raise error(f"{what} {path} leads outside {inside} (it resolves to {real}); refusing to read it. "
                    f"Copy the file into {inside} instead of linking to it.")


def _check_stat(path: str, st: os.stat_result, max_bytes: int | None, what: str, error: type[Exception]) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file; refusing to read it.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size} bytes, over the {max_bytes} bytes such a file may have; "
                    f"refusing to read it.")
    return st.st_size


def check_regular_file(path: str, *, max_bytes: int | None = None, what: str = "File", inside: str | None = None,
                       error: type[Exception] = ValueError) -> int:
    """The size of `path` after checking, without opening it, that it is a file that is safe to read.

    Opening a FIFO blocks until someone writes to it, and a device such as
    /dev/zero never ends: both would hang a reader, so a local path must be a
    regular file (symlinks followed, by `os.stat`, which never blocks). With
    `inside`, a local path must also resolve to somewhere inside that
    directory, so a symlink cannot make a reader read a file from elsewhere.
    Remote paths (`gs://...`) have no FIFOs or symlinks; their size is still
    capped by `max_bytes`. Raises `error` (ValueError unless the caller's own
    kind is given) naming `what`, the path and the problem.
    """
    path = os.fspath(path)
    if not is_local(path):
        gfile = _gfile()
        if not gfile.exists(path):
            raise error(f"{what} {path} does not exist.")
        if gfile.isdir(path):
            raise error(f"{what} {path} is a directory, not a file; refusing to read it.")
        size = gfile.stat(path).length
        if max_bytes is not None and size > max_bytes:
            raise error(f"{what} {path} is {size} bytes, over the {max_bytes} bytes such a file may have; refusing "
                        f"to read it.")
        return size
    if inside is not None:
        _check_inside(path, inside, what, error)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist.") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}.") from None
    return _check_stat(path, st, max_bytes, what, error)


@contextlib.contextmanager
def open_regular(path: str, *, max_bytes: int | None = None, what: str = "File", inside: str | None = None,
                 error: type[Exception] = ValueError) -> Iterator:
    """Yields `path` opened for reading in binary, after the checks of `check_regular_file`.

    A local file is opened without blocking (O_NONBLOCK: a FIFO opens at once
    instead of waiting for a writer) and checked on the open descriptor, so
    what is checked is what is read. Reading at most `max_bytes` is still the
    reader's job: a file may grow after the check.
    """
    path = os.fspath(path)
    if not is_local(path):
        check_regular_file(path, max_bytes=max_bytes, what=what, error=error)
        with _gfile().GFile(path, "rb") as f:
            yield f
        return
    if inside is not None:
        _check_inside(path, inside, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist.") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be opened: {e.strerror or e}.") from None
    try:
        _check_stat(path, os.fstat(fd), max_bytes, what, error)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: str, *, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file", inside: str | None = None,
              error: type[Exception] = ValueError) -> Any:
    """The JSON value in `path`, read only after `open_regular`'s checks and never past `max_bytes`.

    Every JSON file a reader may not have written itself (manifests, `stream.json`, `disguise.json`) comes
    through here, so a FIFO, a device or a huge file is refused the same way everywhere. A missing local file
    is still a FileNotFoundError, which callers tell apart from a bad one. Malformed JSON raises
    `json.JSONDecodeError` (a ValueError) or RecursionError, as `json.loads` does.
    """
    path = os.fspath(path)
    if is_local(path) and not os.path.lexists(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")
    with open_regular(path, max_bytes=max_bytes, what=what, inside=inside, error=error) as f:
        raw = f.read(max_bytes + 1)  # the file may have grown since the check
    if len(raw) > max_bytes:
        raise error(f"{what} {path} is over {max_bytes} bytes; refusing to read it.")
    return json.loads(raw)


@contextlib.contextmanager
def atomic_dir(path: str, *, replace: bool | Collection[str] = False) -> Iterator[str]:
    """Yields a temporary sibling directory that is renamed to `path` on success.

    Readers see either the old `path` (or nothing) or the finished directory,
    never a partial one. With `replace=True` an existing `path` is swapped out
    and removed after the new one is in place; otherwise an existing `path`
    raises FileExistsError before anything is written. Deciding *whether* a
    directory may be replaced is the caller's job. `replace` may instead name
    the files the caller verified in `path` (as `shards.check_output_dir`
    does): then only those files are deleted from the old directory, and the
    directory itself only if nothing else appeared in it since (else it is
    left, under a hidden sibling name, and a warning names it).
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
            if isinstance(replace, bool):
                _rmtree(old, gfile)
            else:
                _remove_listed(old, replace, gfile)
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


def _remove_listed(directory: str, names: Collection[str], gfile) -> None:
    """Deletes `names` from `directory`, then the directory if that left it empty (else warns and keeps it)."""
    for name in names:
        target = f"{directory}/{name}"
        if gfile is not None:
            if gfile.exists(target):
                gfile.remove(target)
        elif os.path.lexists(target):
            os.unlink(target)
    leftover = os.listdir(directory) if gfile is None else gfile.listdir(directory)
    if leftover:
        import logging

        logging.getLogger(__name__).warning("Kept %s: besides the replaced files it holds %s, which appeared while "
                                            "it was being replaced.", directory, sorted(leftover)[:5])
    elif gfile is None:
        os.rmdir(directory)
    else:
        gfile.rmtree(directory)


def _rmtree(path, gfile):
    if gfile is None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        gfile.rmtree(path)
