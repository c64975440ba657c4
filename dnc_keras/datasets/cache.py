"""A disk cache for the datasets this package draws rather than downloads (the glyphs): a later
process reads the arrays instead of drawing them again.

Files live where Keras keeps the datasets it downloads, `$KERAS_HOME/datasets` (by default
`~/.keras/datasets`), under `dnc_keras/`, one `.npz` per key. The key is everything the arrays
depend on, the code that draws them included, so another argument, font file or version of the
module is another file, never a stale hit. A file that cannot be read is drawn again and
replaced (written atomically); a folder that cannot be written is skipped: the cache only saves
time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np


def cache_dir():
    """The folder of the cached arrays: `$KERAS_HOME/datasets/dnc_keras`, as Keras's own
    `get_file` caches under `~/.keras/datasets` when KERAS_HOME is unset."""
    root = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(root, "datasets", "dnc_keras")


def file_fingerprint(path):
    """What identifies a file's content without reading it: name, size, modification time."""
    stat = os.stat(path)
    return [os.path.basename(path), stat.st_size, stat.st_mtime_ns]


def cached_path(name, key):
    """The cache file of `name` under `key` (any JSON-serialisable value)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    return os.path.join(cache_dir(), f"{name}-{digest}.npz")


def cached_arrays(name, key, draw, use_cache=True):
    """`draw()`'s {name: array}: read from the cache file of (`name`, `key`) when it can be
    read, else drawn and stored there. `use_cache=False` draws and stores nothing.

    Returns:
        (arrays, read): `read` is True when the arrays came from the cache.
    """
    if not use_cache:
        return draw(), False
    path = cached_path(name, key)
    stored = _read(path)
    if stored is not None:
        return stored, True
    arrays = draw()
    _write(path, arrays)
    return arrays, False


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except Exception:  # missing, truncated, not an npz: draw again
        return None


def _write(path, arrays):
    from dnc_keras import files

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only home or a full disk: the arrays are still returned
