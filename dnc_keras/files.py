"""Writing files so that nothing is ever half-written: a temporary file in the same folder, then
an atomic rename.

A crash, a kill or a full disk during a write leaves the previous file (or none) in place, never
a truncated one; the temporary file is removed, and a full disk or a read-only folder becomes an
`OSError` naming the file and the cause in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile

_CAUSES = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exhausted",
           errno.ENOTDIR: "a path component is a file, not a folder",
           errno.EISDIR: "it is a folder"}


class WriteError(OSError):
    """A file could not be written; the message names it and why, in one line."""


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix, for writers that look at it); on
    success renames it over `path`, on failure removes it.

    Example:
    ```python
    with atomic_path("run/model.keras") as tmp:
        model.save(tmp)
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    # The whole suffix (".weights.h5", not ".h5"): Keras checks it.
    stem, dot, suffix = name.lstrip(".").partition(".")
    suffix = f".{suffix}" if dot else ""
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=suffix)
        os.close(handle)
        # mkstemp makes the file owner-only; the renamed file gets what open() would give it,
        # so a serving account can read a model or manifest as it reads TensorFlow's files.
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as error:
        raise WriteError(_message(path, error)) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flushed to disk before it replaces the old file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise WriteError(_message(path, error)) from None
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path, data):
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value, indent=2):
    """Writes `value` as JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=indent) + "\n")


def _umask():
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def cause(error):
    """An `OSError`'s cause in a few words: "the disk is full", "permission denied", ..."""
    return _CAUSES.get(error.errno, error.strerror or str(error))


def _message(path, error):
    return f"cannot write {path}: {cause(error)}"
