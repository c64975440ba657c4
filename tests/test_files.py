"""Atomic writes: the previous file or none, never a partial one, and one-line errors."""

import errno
import os

import pytest

from dnc_keras import files


def test_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"a": 1})
    files.write_json(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


def test_a_writer_that_fails_midway_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"good model")
    with pytest.raises(RuntimeError, match="killed"):
        with files.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a mod")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"good model"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    path.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.WriteError) as error:
        files.write_text(path, "new")
    assert str(error.value) == f"cannot write {path}: the disk is full"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["history.json"]


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "out").write_text("a file")
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(files.WriteError) as error:
        files.write_json(target, {})
    assert str(error.value) == (f"cannot write {target}: a path component is a file, "
                                "not a folder")


def test_the_temporary_file_keeps_the_whole_suffix(tmp_path):
    with files.atomic_path(tmp_path / "best.weights.h5") as tmp:
        assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").close()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_written_file_has_the_permissions_open_would_give(tmp_path, umask):
    # Against a file the same process creates with open(): a serving account must be able to
    # read model.keras and manifest.json as it reads the files TensorFlow writes.
    previous = os.umask(umask)
    try:
        files.write_text(tmp_path / "written.json", "{}")
        with open(tmp_path / "opened.json", "w"):
            pass
    finally:
        os.umask(previous)
    mode = os.stat(tmp_path / "written.json").st_mode & 0o777
    assert mode == os.stat(tmp_path / "opened.json").st_mode & 0o777 == 0o666 & ~umask
