"""benchmarks/bench_main_job.py in its tiny mode: `dnc-keras train` in a fresh process, its
printed metrics recorded as they were printed."""

import pytest

from bench_harness import load_script, read_results


@pytest.mark.bench_tiny
def test_bench_main_job_tiny(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_main_job")
    out = tmp_path / "main_job.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_main_job", *argv)
    assert results["label"] == "dnc_keras " + " ".join(bench.TINY_ARGS)
    assert results["test_classes"] == 5  # digits: 5 of the 10 classes are unseen
    for metrics in (results["test"], results["raw_pixels"]):
        assert set(metrics) >= {"R@1", "MAP@R", "NMI"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert 0 < results["train_seconds"] < results["seconds"]


def test_the_label_names_what_the_run_trained(repo_on_pythonpath):
    bench = load_script("bench_main_job")
    config = {"preset": "glyphs", "backbone": "conv4", "normalization": "renorm",
              "learners": 8, "epochs": 48, "recluster_features": "training"}
    assert bench.describe(config) == ("dnc_keras (glyphs recipe: Conv-4 with batch renorm, "
                                      "K = 8, 48 epochs, re-clustering on the train steps' "
                                      "features)")
    assert bench.describe({**config, "preset": None, "normalization": "batch",
                           "recluster_features": "pass"}) == \
        "dnc_keras (Conv-4, K = 8, 48 epochs)"
