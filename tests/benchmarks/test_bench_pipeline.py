"""benchmarks/bench_pipeline.py in its tiny mode (random images in place of glyphs), in-process."""

import numpy as np

from bench_harness import load_script, ratio_ok, read_results, summary_ok

CANDIDATES = ("pipeline (random, K=4)", "pipeline (2k images, 400 classes, K=8)",
              "pipeline+augment (random)", "step (batch in memory)", "fit (random pipeline)")


def test_bench_pipeline_tiny(tmp_path):
    bench = load_script("bench_pipeline")
    out = tmp_path / "pipeline.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_pipeline", *argv)
    assert results["benchmark"] == "pipeline"
    settings = results["settings"]
    assert (settings["repeats"], settings["batches"], settings["steps"], settings["n"]) == (
        1, 2, 2, 2000)
    assert tuple(results["images_per_s"]) == CANDIDATES
    for name in CANDIDATES:
        seconds = results["seconds"][name]
        assert summary_ok(seconds, repeats=1)
        # images/s: 2 batches (pipelines) or 2 steps (fits) of 80 images per unit.
        assert np.isclose(results["images_per_s"][name], 2 * 80 / seconds["median_s"])
    step = "step (batch in memory)"
    assert set(results["ratio_to_step"]) == set(CANDIDATES) - {step}
    for name, ratio in results["ratio_to_step"].items():
        assert ratio_ok(ratio)
        expected = results["images_per_s"][name] / results["images_per_s"][step]
        assert np.isclose(ratio["median"], expected), name


def test_bench_pipeline_names_its_sets_as_the_full_run_does():
    bench = load_script("bench_pipeline")
    assert bench._count(60_000) == "60k" and bench._count(60_000 // 5) == "12k"
    assert bench.parse_args([]).out.endswith("benchmarks/results/pipeline.json")
