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
    assert row["auto_backend"] in ("sklearn on 800", "faiss on 800")  # 800 <= 4,096: all rows
    assert row["all_rows_backend"] == row["auto_backend"].split()[0]
    assert row["ari_auto_vs_all_rows"] == 1.0  # the same k-means on the same rows
    assert -1 <= row["ari_seed_vs_seed_all_rows"] <= 1
    assert row["objective_auto_over_all_rows"] == 1.0 and row["objective_seed_1_over_seed_0"] > 0
    assert 1 <= row["sklearn_iterations"] <= 100
    assert set(row["seconds"]) == {"sklearn", "faiss", "faiss_equal_iters", "auto",
                                   "accept_and_match"}
    # 2 epochs of 800 // 80 steps between two re-clusterings.
    assert np.isclose(row["train_between_s"], 2 * 10 * results["train_step_s"])
    assert np.isclose(row["share"], row["recluster_s"] / row["train_between_s"])
    assert 0 <= row["bank"]["unseen_images"] <= 800
    assert 0 <= row["walk_bank"]["unseen_images"] <= row["bank"]["unseen_images"]
    assert row["undrawable_images"] <= row["walk_bank"]["unseen_images"]
    for bank in (row["bank"], row["walk_bank"]):
        assert 0 <= bank["embedded_images"] <= 800
    assert np.isclose(row["walk_bank"]["share"], row["walk_bank"]["recluster_s"]
                      / row["walk_bank"]["train_between_s"])
    assert results["max_share_walk_bank"] == row["walk_bank"]["share"]
    assert results["max_share"] == row["share"] > 0
    assert results["met"] == (row["share"] <= 0.05)
    assert "| 800 | 16 | 2 |" in results["table"]


def test_the_walk_draws_every_image_where_random_batches_miss_some():
    """40 classes of 4 images in one cluster, 2 epochs of 2 batches of 20 x 4: the walk's
    first epoch takes every class once (all 160 images); random batches pick 20 of the 40
    classes 4 times, missing a class with probability 1/16."""
    bench = load_script("bench_recluster")
    labels = np.repeat(np.arange(40), 4)
    one_cluster = np.zeros(len(labels), np.int64)
    assert bench.images_left_unseen(labels, one_cluster, 1, order="walk") == 0
    unseen = bench.images_left_unseen(labels, one_cluster, 1, order="random")
    assert unseen % 4 == 0 and 0 < unseen < 40


def test_the_bank_embeds_an_undrawable_image_every_second_re_clustering():
    """Two classes of 4 images and one class with an image in each of 2 clusters: that class's
    2 images are undrawable, the walk draws all 8 others every period; their bank rows are
    embedded at one re-clustering and serve the next, so 2 images every second: 1 a time."""
    bench = load_script("bench_recluster")
    labels = np.array([0] * 4 + [1] * 4 + [2, 2] + [3] * 4 + [4] * 4)
    clusters = np.array([0] * 8 + [0, 1] + [1] * 8)
    assert bench.images_left_unseen(labels, clusters, 2, order="walk") == 2
    assert bench.images_embedded_afresh(labels, clusters, 2, order="walk") == 1.0


def test_objective_is_the_sum_of_squares_around_the_cluster_means():
    bench = load_script("bench_recluster")
    x = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 7.0], [5.0, 9.0]])
    # cluster 0: mean (1, 0), 1 + 1; cluster 1: mean (5, 7), 4 + 0 + 4
    assert bench.objective(x, np.array([0, 0, 1, 1, 1])) == 10.0
