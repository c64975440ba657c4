"""benchmarks/bench_inference.py in its tiny mode on the tiny digits export that the export
fidelity benchmark's tiny run keeps (a subprocess: it sets TensorFlow's thread pools, which a
process can do only before its runtime starts)."""

import numpy as np
import pytest

from bench_harness import read_results, run_script

RUNTIMES = {"tf_savedmodel", "onnxruntime"}


@pytest.mark.bench_tiny
def test_bench_inference_tiny(tmp_path, export_fidelity_tiny):
    _, workdir = export_fidelity_tiny
    export_dir = workdir / "exports" / "digits"
    out = tmp_path / "inference.json"
    run_script("bench_inference", export_dir, "--tiny", "--threads", "1", "--out", out,
               cwd=tmp_path)
    results = read_results(out, "bench_inference", export_dir, "--tiny", "--threads 1")
    assert results["command"] == results["provenance"]["command"]
    assert results["repeats"] == 5
    model = results["model"]
    assert model["name"] == "digits" and model["input"] == [8, 8, 1]
    assert model["embedding_dim"] == 16 and model["parameters"] > 0
    assert model["trained"] == {"dataset": "digits", "epochs": 1, "learners": 2,
                                "embedding_dim": 16}
    assert results["machine"]["threads"] == 1
    assert results["provenance"]["threads"]["tensorflow_intra_op"] == 1
    rows = results["results"]
    runtimes = RUNTIMES | {f"onnxruntime_{m}" for m in model["variants"]}
    assert {(r["runtime"], r["batch"]) for r in rows} == {
        (name, batch) for name in runtimes for batch in (1, 64)}
    for row in rows:
        assert 0 < row["best_ms"] <= row["median_ms"]
        # median_ms is rounded to 1 us, images_per_s to 0.1 image/s.
        expected = row["batch"] / (row["median_ms"] / 1e3)
        assert np.isclose(row["images_per_s"], expected, rtol=0.5e-3 / row["median_ms"],
                          atol=0.1)
