"""The run folder's states and what `claim` does with each: a finished run is never replaced
without --overwrite, an unfinished one resumes only with its own settings."""

import json
import os
import signal
import subprocess
import sys

import pytest

from dnc_keras.training.run_folder import RunFolder, split_hash

CONFIG = {"dataset": "digits", "epochs": 3, "seed": 0, "out": "x", "seeds": 1}


def test_new_folder_is_created_with_its_config(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.state == "new"
    assert folder.claim(CONFIG) is False
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == CONFIG
    assert folder.state == "unfinished"


def test_finished_run_is_refused_then_replaced_with_overwrite(tmp_path):
    run = tmp_path / "run"
    RunFolder(run).claim(CONFIG)
    (run / "model.keras").write_text("weights")
    (run / "metrics.json").write_text("{}")
    assert RunFolder(run).state == "finished"
    with pytest.raises(ValueError) as error:
        RunFolder(run).claim(CONFIG)
    assert str(error.value) == (f"{run} holds a finished run; pass --overwrite to replace it, "
                                "or choose another --out")
    assert (run / "model.keras").read_text() == "weights"
    assert RunFolder(run, overwrite=True).claim({**CONFIG, "epochs": 4}) is False
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json"]


def test_unfinished_run_resumes_with_the_same_settings_only(tmp_path):
    run = tmp_path / "run"
    RunFolder(run).claim(CONFIG)
    (run / "checkpoints").mkdir()
    # out and seeds may differ (a moved folder, one seed of a repeated run); the rest may not.
    assert RunFolder(run).claim({**CONFIG, "out": "elsewhere"}) is True
    with pytest.raises(ValueError, match=r"other settings \(epochs: 3 there, 5 here; seed: 0 "
                       r"there, 1 here\)"):
        RunFolder(run).claim({**CONFIG, "epochs": 5, "seed": 1})
    assert (run / "checkpoints").is_dir()



def test_a_run_still_going_holds_its_folder(tmp_path):
    # The README's resume instruction is "run the same command again": typed while the first
    # run still goes, it must be refused, not train on the first run's checkpoints.
    run = tmp_path / "run"
    first = RunFolder(run)
    first.claim(CONFIG)
    with pytest.raises(ValueError) as error:
        RunFolder(run).claim(CONFIG)
    assert str(error.value) == (f"{run} is in use by a run still going (process {os.getpid()}):"
                                " wait for it to end, or choose another --out")
    with pytest.raises(ValueError, match="in use by a run still going"):
        RunFolder(run, overwrite=True).claim(CONFIG)
    assert json.loads((run / "config.json").read_text()) == CONFIG  # nothing cleared
    first.release()
    assert RunFolder(run).claim(CONFIG) is True  # resumes


def test_a_killed_run_leaves_its_folder_free(tmp_path):
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dnc_keras.training.run_folder import RunFolder;"
         f" folder = RunFolder(sys.argv[1]); folder.claim({CONFIG!r}); print('held', flush=True);"
         " sys.stdin.read()",
         str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=f"in use by a run still going .process {child.pid}"):
            RunFolder(run).claim(CONFIG)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert RunFolder(run).claim(CONFIG) is True


def test_a_file_system_without_locks_runs_unprotected_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"cannot lock .*\(No locks available\): nothing "
                      "stops a second run"):
        assert RunFolder(tmp_path / "run").claim(CONFIG) is False
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == CONFIG


def test_a_refused_claim_writes_nothing(tmp_path):
    # A folder of other files is left as it was: no lock file, nothing cleared.
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no dnc-keras run"):
        RunFolder(tmp_path).claim(CONFIG)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_setting_added_since_the_run_was_saved_counts_at_its_default(tmp_path):
    run = tmp_path / "run"
    RunFolder(run).claim(CONFIG)
    (run / "checkpoints").mkdir()
    # test_evaluation came after some runs were saved: at its default it resumes them.
    assert RunFolder(run).claim({**CONFIG, "test_evaluation": True}) is True
    with pytest.raises(ValueError, match=r"other settings \(test_evaluation: True there, "
                       r"False here\)"):
        RunFolder(run).claim({**CONFIG, "test_evaluation": False})

def test_a_foreign_folder_is_not_cleared(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(ValueError, match="holds no dnc-keras run"):
        RunFolder(tmp_path / "photos").claim(CONFIG)
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        RunFolder(tmp_path / "run")


def test_provenance_of_a_resumed_run_keeps_the_first(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.claim(CONFIG)
    folder.record_provenance({"git": "a"}, resuming=False)
    folder.record_provenance({"git": "b"}, resuming=True)
    saved = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert saved == {"git": "a", "resumed": [{"git": "b"}]}


def test_split_hash_changes_with_any_path_or_label():
    base = split_hash(["a.png", "b.png"], [0, 1])
    assert base == split_hash(["a.png", "b.png"], [0, 1])
    assert len({base, split_hash(["a.png", "c.png"], [0, 1]),
                split_hash(["a.png", "b.png"], [1, 1])}) == 3
