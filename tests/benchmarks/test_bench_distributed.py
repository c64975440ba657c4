"""benchmarks/bench_distributed.py in its tiny mode (a subprocess: it configures two logical CPU
devices, which TensorFlow allows only before its runtime starts)."""

import json

import pytest

from bench_harness import ratio_ok, read_results, run_script, summary_ok

CANDIDATES = {"loop_1", "loop_2", "loop_2_local", "fit_1", "fit_2", "gather"}


@pytest.mark.bench_tiny
def test_bench_distributed_tiny(tmp_path):
    out = tmp_path / "distributed.json"
    stdout = run_script("bench_distributed", "--tiny", "--out", out, cwd=tmp_path)
    assert f"wrote {out}" in stdout
    results = read_results(out, "bench_distributed", "--tiny")
    # The provenance first, then the keys the files of this benchmark carried before it.
    assert list(json.loads(out.read_text()))[:5] == [
        "provenance", "benchmark", "command", "date", "machine"]
    assert results["benchmark"] == "distributed"
    assert results["command"] == results["provenance"]["command"]
    settings = results["settings"]
    assert (settings["steps_per_unit"], settings["repeats"], settings["gathers_per_unit"]) == (
        2, 1, 2)
    assert set(results["candidates"]) == CANDIDATES
    for name, entry in results["candidates"].items():
        assert summary_ok(entry, repeats=1), name
        if name == "gather":
            assert entry["per_gather_us"] == entry["median_s"] / 2 * 1e6
        else:
            assert entry["steps_per_s"] == 2 / entry["median_s"]
            assert entry["images_per_s"] == 2 * 80 / entry["median_s"]
    assert len(results["ratios"]) == 5 and all(ratio_ok(r) for r in results["ratios"].values())
    ratio = results["ratios"]["loop_2 / loop_1 (time)"]
    seconds = results["candidates"]
    assert ratio["median"] == seconds["loop_2"]["median_s"] / seconds["loop_1"]["median_s"]
    assert results["gather_share_of_step_estimate"] > 0
