"""benchmarks/bench_faults.py in its tiny mode: one random kill -9 mid-epoch resumed to the
reference model bit for bit, one NaN injection stopped with its one-line message, one full disk
while writing model.keras - each a fresh `dnc-keras train` process."""

import pytest

from bench_harness import load_script, read_results


@pytest.mark.bench_tiny
@pytest.mark.timeout(900)
def test_bench_faults_tiny(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_faults")
    out = tmp_path / "faults.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == 0
    results = read_results(out, "bench_faults", *argv)
    assert set(results["cases"]) == set(bench.TINY_CASES)
    for case, summary in results["cases"].items():
        assert summary["outcome"] == "1 of 1", (case, summary["rows"])
    killed = results["cases"]["mid-epoch"]["rows"][0]
    assert killed["exit"] == -9 and killed["same_weights"] and killed["resumed_from"]
    nan = results["cases"]["nan"]["rows"][0]
    assert nan["exit"] == 2 and not nan["model_written"]
    assert nan["message"].startswith(f"dnc-keras train: error: training diverged at epoch "
                                     f"{nan['epoch']} step {nan['step']}")
    reference = results["references"]["fit"]
    assert len(reference["action_seconds"]) >= 3 and len(reference["save_seconds"]) == 6
