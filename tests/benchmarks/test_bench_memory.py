"""benchmarks/bench_memory.py in its tiny mode: `dnc-keras train` on digits and a re-clustering
of 400 images, each a child process (started from `main` in-process)."""

import pytest

from bench_harness import BENCHMARKS, load_script, read_results


@pytest.mark.bench_tiny
def test_bench_memory_tiny(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_memory")
    out = tmp_path / "memory.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_memory", *argv)
    assert results["benchmark"] == "memory"
    job = results["job"]
    assert job["returncode"] == 0 and job["seconds"] > 0
    assert job["command"] == "dnc-keras train " + " ".join(bench.TINY_JOB_ARGS)
    # TensorFlow alone takes a few hundred MiB; a child's peak below that was not measured.
    assert 200 < job["peak_rss_mib"] < 8000
    child = results["recluster"]
    assert child["n"] == 400 and child["clusters"] >= 1 and child["seconds"] > 0
    assert child["rss_after_import_mib"] <= child["rss_before_mib"] <= child["peak_during_mib"]
    assert child["rise_mib"] == child["peak_during_mib"] - child["rss_before_mib"]
    assert child["images_mib"] == 400 * 28 * 28 * 4 / 2 ** 20
    assert child["features_mib"] == 400 * 64 * 4 / 2 ** 20


def test_bench_memory_skip_job_writes_its_own_file():
    bench = load_script("bench_memory")
    results = BENCHMARKS / "results"
    assert bench.parse_args([]).out == str(results / "memory.json")
    assert bench.parse_args(["--skip-job"]).out == str(results / "memory_recluster.json")
    assert bench.parse_args(["--tiny"]).out == str(results / "tiny" / "memory.json")
