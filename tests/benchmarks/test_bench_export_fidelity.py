"""benchmarks/bench_export_fidelity.py in its tiny mode: one case (digits), trained with
`dnc-keras train` and exported with `dnc-keras export`, each in its own process (the
`export_fidelity_tiny` fixture, whose export the inference benchmark's test reuses)."""

import json

import pytest

from bench_harness import read_results

from dnc_keras.export.parity import PARITY_TOLERANCE


@pytest.mark.bench_tiny
def test_bench_export_fidelity_tiny(export_fidelity_tiny):
    out, workdir = export_fidelity_tiny
    results = read_results(out, "bench_export_fidelity", "--tiny", "--workdir")
    [row] = results["rows"]
    assert row["case"] == "digits" and row["train"].startswith("--dataset digits --epochs 1")
    # The row holds what the run and its export wrote, not figures of its own.
    metrics = json.loads((workdir / "digits" / "metrics.json").read_text())
    manifest = json.loads((workdir / "exports" / "digits" / "manifest.json").read_text())
    assert row["in_run"] == {k: metrics["test"][k] for k in ("R@1", "MAP@R")}
    assert row["preprocessing"] == manifest["preprocessing"]
    for runtime in ("savedmodel", "onnx"):
        served = manifest["quality"][runtime]["metrics"]["test"]
        assert row[runtime] == {k: served[k] for k in ("R@1", "MAP@R")}
        assert 0.0 <= row[runtime]["R@1"] <= 1.0 and 0.0 < row[runtime]["MAP@R"] <= 1.0
        # What is served retrieves as the run measured (the export's own check: 0.005).
        assert abs(row[runtime]["MAP@R"] - row["in_run"]["MAP@R"]) <= 0.005
    parity = row["parity"]
    assert parity["inputs"] == manifest["parity"]["inputs"] > 0
    assert parity["sizes"] == len(manifest["parity"]["sizes"]) > 1
    assert 0.0 <= parity["max_abs_diff"] <= PARITY_TOLERANCE
