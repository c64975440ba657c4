"""bench_nmi.py --tiny: each route's NMI, against scikit-learn's computed in the same run."""

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from bench_harness import load_script, read_results


def test_bench_nmi_tiny_routes_against_sklearn(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_nmi")
    out = tmp_path / "nmi.json"
    argv = ["--tiny", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_nmi", *argv)
    assert set(results["routes"]) == set(bench.routes_to_measure())
    for name, route in results["routes"].items():
        assert set(route["seeds"]) == {"0", "1"}
        for seed, entry in route["seeds"].items():
            assert 0 < entry["nmi"] <= 1 and entry["seconds"] > 0
            assert np.isclose(entry["difference"], entry["nmi"] - entry["sklearn_nmi"])
    # The reference is scikit-learn's own NMI of its KMeans on the same data, recomputed here.
    x, labels = bench.sop_like_embeddings(3000, 561, 32, seed=0)
    value, _, _ = bench.sklearn_nmi(x, labels, 0)
    assert np.isclose(results["routes"]["package"]["seeds"]["0"]["sklearn_nmi"], value)
    # "package" is the NMI that the package's evaluation reports on the same embeddings.
    from dnc_keras.evaluation import retrieval_metrics

    reported = retrieval_metrics(x, labels, ks=(1,), nmi=True, seed=0)["NMI"]
    assert np.isclose(results["routes"]["package"]["seeds"]["0"]["nmi"], reported)


def test_sop_like_embeddings_are_unit_vectors_of_classes_of_two_or_more():
    bench = load_script("bench_nmi")
    x, labels = bench.sop_like_embeddings(600, 100, 16, seed=3)
    assert x.shape == (600, 16) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.bincount(labels).min() >= 2 and len(np.unique(labels)) == 100
    assert normalized_mutual_info_score(labels, labels) == 1.0
