"""benchmarks/bench_evaluation.py in its tiny mode, in-process, with the configuration before the
optimisation timed too: both compute the same metrics, so it also checks that they agree."""

import numpy as np

from bench_harness import load_script, ratio_ok, read_results, summary_ok


def test_bench_evaluation_tiny(tmp_path):
    bench = load_script("bench_evaluation")
    out = tmp_path / "evaluation.json"
    argv = ["--tiny", "--with-before", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_evaluation", *argv)
    assert results["benchmark"] == "evaluation"
    settings = results["settings"]
    assert (settings["n"], settings["dim"], settings["repeats"]) == (3000, 32, 1)
    # The metrics are those of the same synthetic embeddings, computed here independently.
    from dnc_keras.evaluation import retrieval_metrics

    x, labels = bench.sop_like(3000, 32)
    expected = retrieval_metrics(x, labels, ks=bench.SOP_KS, nmi=False)
    assert set(results["metrics"]) == set(expected)
    for name, value in expected.items():
        assert np.isclose(results["metrics"][name], value), name
        assert 0.0 <= results["metrics"][name] <= 1.0
    assert set(results["seconds"]) == {"retrieval_metrics", "matmul_bound", "before"}
    assert all(summary_ok(s, repeats=1) for s in results["seconds"].values())
    assert ratio_ok(results["ratio_to_bound"]) and ratio_ok(results["before_over_after"])
    assert results["met"] == (results["ratio_to_bound"]["median"] <= results["target"] == 1.2)
    assert results["full_matrix_mib"] == 3000 * 3000 * 4 / 2 ** 20
    assert results["embeddings_mib"] == 3000 * 32 * 4 / 2 ** 20
    for memory in results["memory"].values():
        assert memory["tracemalloc_peak_mib"] > 0
    nmi = results["nmi"]
    assert nmi["iterations_timed"] == 1 and nmi["clusters"] == len(np.unique(labels))
    assert nmi["extrapolated_100_iterations_s"] == 100 * nmi["seconds_per_iteration"] > 0
