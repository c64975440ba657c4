"""benchmarks/bench_bank_clusters.py in its tiny mode: each clustering of the train steps'
features is compared with a full pass, and the comparison checked against scikit-learn."""

from bench_harness import load_script, read_results


def test_bench_bank_clusters_tiny(tmp_path, omniglot_replica):
    bench = load_script("bench_bank_clusters")
    out = tmp_path / "bank.json"
    argv = ["--tiny", "--data-dir", str(omniglot_replica), "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_bank_clusters", *argv)
    assert results["settings"]["batch_order"] == "walk"
    assert results["settings"]["recluster_features"] == "training"
    [run] = results["runs"]
    # 3 epochs, re-clustering every epoch from epoch 1 (the division to K = 2, then 4).
    assert [c["epoch"] for c in run["comparisons"]] == [1, 2]
    for row in run["comparisons"]:
        assert 0.0 <= row["unseen_fraction"] <= 1.0
        assert -1.0 <= row["ari"] <= 1.0 and -1.0 <= row["seed_ari"] <= 1.0
    assert results["summary"]["ari_min"] == min(c["ari"] for c in run["comparisons"])
    # The patched callback is put back: other jobs in this process are not compared.
    from dnc_keras import callbacks
    from dnc_keras.training import job
    assert job.DnCScheduleCallback is callbacks.DnCScheduleCallback
