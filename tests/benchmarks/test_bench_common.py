"""benchmarks/common.py's provenance helpers against a throwaway git repository."""

import subprocess

from bench_harness import load_script


def _git(folder, *args):
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def test_git_state_counts_code_changes_not_results_files(tmp_path):
    common = load_script("common")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    folder = tmp_path / "benchmarks"
    state = common.git_state(str(folder))
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text('{"s": 2}\n')
    assert common.git_state(str(folder))["dirty"] is False  # a benchmark wrote its output
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_state(str(folder))["dirty"] is True
