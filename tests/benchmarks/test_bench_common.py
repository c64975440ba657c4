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


def test_paired_ratios_give_a_t_interval_on_the_log_ratios():
    # Hand-computed: ratios 1, e^0.2 and e^0.1 -> logs 0, 0.2, 0.1: mean 0.1, sd 0.1,
    # half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.3027 * 0.057735 = 0.24841.
    import math

    common = load_script("common")
    out = common.paired_ratios([1.0, math.exp(0.2), math.exp(0.1)], [1.0, 1.0, 1.0])
    assert math.isclose(out["geometric_mean"], math.exp(0.1), rel_tol=1e-9)
    assert math.isclose(out["ci95"][0], math.exp(0.1 - 0.24841), rel_tol=1e-4)
    assert math.isclose(out["ci95"][1], math.exp(0.1 + 0.24841), rel_tol=1e-4)
    assert out["median"] == math.exp(0.1)
    assert "ci95" not in common.paired_ratios([2.0], [1.0])  # one round: no interval
