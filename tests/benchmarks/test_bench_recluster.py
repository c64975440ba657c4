"""benchmarks/bench_recluster.py in its tiny mode (N = 800, d = 16, K = 2), in-process."""

import numpy as np

from bench_harness import load_script, ratio_ok, read_results, summary_ok


def test_bench_recluster_tiny(tmp_path):
    bench = load_script("bench_recluster")
    out = tmp_path / "recluster.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_recluster", *argv)
    assert results["benchmark"] == "recluster"
    settings = results["settings"]
    assert (settings["sizes"], settings["dims"], settings["ks"], settings["steps"]) == (
        [800], [16], [2], 2)
    assert summary_ok(results["train_step"], repeats=1)
    assert np.isclose(results["train_step_s"], results["train_step"]["median_s"] / 2)
    assert ratio_ok(results["train_step_with_bank"]["time_ratio_to_step"])
    embedding = results["embedding"]["800"]
    assert np.isclose(embedding["images_per_s"], 800 / embedding["median_s"])
    assert ratio_ok(embedding["share_of_training"])
    [row] = results["kmeans"]
    assert (row["n"], row["dim"], row["k"]) == (800, 16, 2)
    assert row["auto_backend"] in ("sklearn", "faiss")
    assert 1 <= row["sklearn_iterations"] <= 100
    assert set(row["seconds"]) == {"sklearn", "faiss", "faiss_equal_iters",
                                   "faiss_256_per_centroid", "accept_and_match"}
    # 2 epochs of 800 // 80 steps between two re-clusterings.
    assert np.isclose(row["train_between_s"], 2 * 10 * results["train_step_s"])
    assert np.isclose(row["share"], row["recluster_s"] / row["train_between_s"])
    assert 0 <= row["bank"]["unseen_images"] <= 800
    assert results["max_share"] == row["share"] > 0
    assert results["met"] == (row["share"] <= 0.05)
    assert "| 800 | 16 | 2 |" in results["table"]
