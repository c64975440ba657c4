"""The run folder: what state it is in, and writing into it without ever losing a run.

A folder is new (absent or empty), unfinished (a run that stopped before writing its metrics:
killed, diverged) or finished (metrics.json written, last). `dnc-keras train --out DIR`
resumes an unfinished run with the same settings, refuses a finished one unless `--overwrite`,
and writes nothing into the folder before the run's inputs have been checked. Every file goes
through `dnc_keras.files` (a temporary file, then a rename). A run holds a lock on its folder
(`.lock`, released when it ends or its process dies), so a second `train` into the same folder
while the first is running is refused instead of sharing its checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import warnings

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

from dnc_keras import files
from dnc_keras_cli.options import BY_NAME

FINISHED = "metrics.json"
LOCK = ".lock"
# Settings that may differ between a run and its resumption.
_RESUMABLE_DIFFERENCES = {"out", "seeds"}


class RunFolder:
    """A run's folder.

    Args:
        path: the folder.
        overwrite: replace a finished run (or an unfinished one, instead of resuming it).
            Defaults to `False`.
    """

    def __init__(self, path, overwrite=False):
        self.path = os.fspath(path)
        self.overwrite = bool(overwrite)
        self._lock = None
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path} is a file, not a folder: choose another --out")

    def __str__(self):
        return self.path

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def state(self):
        if not os.path.isdir(self.path) or not set(os.listdir(self.path)) - {LOCK}:
            return "new"
        return "finished" if os.path.exists(self.file(FINISHED)) else "unfinished"

    def claim(self, config):
        """Makes the folder the run's: checked against what it holds, created or cleared,
        config.json written, locked until `release`. Call it only once the run's inputs are
        known to be good.

        Returns:
            True when the folder holds an unfinished run of these settings to resume.

        Raises:
            ValueError: another process's run holds the folder, or the folder holds a run
                this one may not resume or replace.
        """
        state = self.state
        if state == "finished" and not self.overwrite:
            raise ValueError(f"{self.path} holds a finished run; pass --overwrite to replace "
                             "it, or choose another --out")
        resuming = state == "unfinished" and not self.overwrite
        if resuming:
            different = self.differences(config)
            if different is None:
                raise ValueError(f"{self.path} is not empty and holds no dnc-keras run "
                                 "(no config.json): choose another --out, or pass --overwrite "
                                 "to clear it")
            if different:
                saved = self._saved_settings(config)
                values = "; ".join(f"{k}: {saved.get(k)!r} there, {config.get(k)!r} here"
                                   for k in different)
                raise ValueError(f"{self.path} holds an unfinished run with other settings "
                                 f"({values}): resume it with the same settings, pass "
                                 "--overwrite to start again, or choose another --out")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise files.WriteError(f"cannot create {self.path}: {files.cause(error)}") from None
        self._acquire()
        try:
            if not resuming:
                if state != "new":
                    self._clear()
                files.write_json(self.file("config.json"), config)
        except BaseException:
            self.release()
            raise
        return resuming

    def release(self):
        """Lets another run use the folder (also done by the system when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _acquire(self):
        if fcntl is None or self._lock is not None:
            return
        try:
            handle = open(self.file(LOCK), "a+")
        except OSError as error:
            raise files.WriteError(f"cannot write {self.file(LOCK)}: "
                                   f"{files.cause(error)}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another open file holds the lock
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ValueError(f"{self.path} is in use by a run still going (process {holder}): "
                             "wait for it to end, or choose another --out") from None
        except OSError as error:  # a file system without locks: run, unprotected
            handle.close()
            warnings.warn(f"cannot lock {self.path} ({files.cause(error)}): nothing stops "
                          "a second run into it while this one goes", stacklevel=3)
            return
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def differences(self, config):
        """The settings in which the folder's run differs from `config` (sorted names; those
        that may change on resumption left out), or None when it holds no config.json."""
        saved = self._saved_settings(config)
        if saved is None:
            return None
        return sorted(k for k in set(saved) | set(config)
                      if saved.get(k) != config.get(k) and k not in _RESUMABLE_DIFFERENCES)

    def _saved_settings(self, config):
        """config.json's settings, or None; a setting of `config` added to the package after
        the run was saved counts at the value such runs had: its default, or the one it names
        (`Option.predates`)."""
        saved = self._saved_config()
        if saved is None:
            return None
        return {**{k: v.before_it_existed for k, v in BY_NAME.items() if k in config}, **saved}

    def _saved_config(self):
        try:
            with open(self.file("config.json")) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None

    def _clear(self):
        for entry in set(os.listdir(self.path)) - {LOCK}:
            full = self.file(entry)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)

    def record_provenance(self, record, resuming):
        """provenance.json: what made the run; a resumption is appended, not substituted."""
        path = self.file("provenance.json")
        if resuming and os.path.exists(path):
            with open(path) as f:
                first = json.load(f)
            first.setdefault("resumed", []).append(record)
            record = first
        self.write_json("provenance.json", record)

    def write_json(self, name, value):
        files.write_json(self.file(name), value)

    def write_text(self, name, text):
        files.write_text(self.file(name), text)


def provenance(config, data_hash):
    """What made a run: package version and git commit, libraries, seeds, the data split."""
    versions = {}
    for package in ("tensorflow", "keras", "numpy", "faiss-cpu", "scikit-learn", "Pillow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"dnc_keras": _version(), "git": git_commit(), "libraries": versions,
            "seed": config.get("seed"), "data_split_sha256": data_hash}


def _version():
    try:
        return importlib.metadata.version("dnc_keras")
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit():
    """{"commit", "dirty"} of the checkout this package runs from, or None outside one."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=folder, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def split_hash(*parts):
    """SHA-256 of a data split: its sources (paths or pixels) and labels, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if part is None:
            continue
        if hasattr(part, "dtype") and part.dtype != object:
            digest.update(part.tobytes())
        else:
            for item in part:
                digest.update(str(item).encode())
                digest.update(b"\0")
    return digest.hexdigest()
