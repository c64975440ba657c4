"""benchmarks/bench_served_quality.py in its tiny mode on an Omniglot-like folder (one seed:
`dnc-keras train` and `dnc-keras export`, each in its own process), and its paired differences
against hand-computed ones."""

import json

import numpy as np
import pytest

from bench_harness import load_script, read_results, run_script

from dnc_keras.export.parity import PARITY_TOLERANCE


@pytest.mark.bench_tiny
def test_bench_served_quality_tiny(tmp_path, omniglot_replica):
    out = tmp_path / "served.json"
    # An earlier label's rows stay; the earlier top-level provenance is replaced.
    earlier = {"provenance": {"command": "earlier"}, "runs": {"before": {"rows": []}}}
    out.write_text(json.dumps(earlier))
    run_script("bench_served_quality", "--tiny", "--data-dir", omniglot_replica, "--out", out,
               cwd=tmp_path)
    results = read_results(out, "bench_served_quality", "--tiny", "--data-dir")
    assert set(results["runs"]) == {"before", "after"}
    after = results["runs"]["after"]
    assert after["epochs"] == 1 and after["provenance"]["command"] == (
        results["provenance"]["command"])
    assert after["package"]["commit"] == results["provenance"]["git"]["commit"]
    [row] = after["rows"]
    assert row["seed"] == 0
    for key in ("in_run", "served_savedmodel", "served_onnx"):
        assert set(row[key]) == {"R@1", "MAP@R"}
        assert all(0.0 <= v <= 1.0 for v in row[key].values()), key
        assert abs(row[key]["MAP@R"] - row["in_run"]["MAP@R"]) <= 0.005
    assert 0.0 <= row["parity_max_abs_diff"] <= PARITY_TOLERANCE
    # Runs of two packages are not paired by seed number: no difference between them.
    assert "served_after_minus_in_run_before" not in results


def test_paired_differences_by_hand():
    before = {0: 0.5, 1: 0.6, 2: 0.7, 7: 0.1}
    after = {0: 0.6, 1: 0.6, 2: 0.9, 3: 0.2}
    paired = load_script("common").paired(before, after, "MAP@R")
    diffs = np.array([0.1, 0.0, 0.2])  # seeds 0, 1, 2: those in both
    assert paired["seeds"] == [0, 1, 2]
    assert paired["mean"] == pytest.approx(0.1)
    # t(0.975, 2 degrees of freedom) = 4.302653; the standard error is 0.1 / sqrt(3).
    half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)
    assert paired["ci95"] == pytest.approx([0.1 - half, 0.1 + half], abs=1e-6)
    assert paired["per_seed"] == pytest.approx([0.1, 0.0, 0.2])
    assert load_script("common").paired({0: 0.5}, {0: 0.6}, "R@1") is None


def test_paired_widens_the_verdicts_interval_after_several_looks():
    before = {0: 0.5, 1: 0.6, 2: 0.7}
    after = {0: 0.6, 1: 0.6, 2: 0.9}
    diffs = np.array([0.1, 0.0, 0.2])
    common = load_script("common")
    once = common.paired(before, after, "MAP@R")
    assert "interval" not in once and common.verdict_interval(once) == once["ci95"]
    twice = common.paired(before, after, "MAP@R", looks=2)
    # Two looks: 97.5% confidence, t(0.9875, 2 degrees of freedom) = 6.205347.
    half = 6.205347 * diffs.std(ddof=1) / np.sqrt(3)
    assert twice["confidence"] == pytest.approx(0.975) and twice["looks"] == 2
    assert twice["interval"] == pytest.approx([0.1 - half, 0.1 + half], abs=1e-6)
    assert twice["ci95"] == pytest.approx(once["ci95"])
    assert common.verdict_interval(twice) == twice["interval"]
