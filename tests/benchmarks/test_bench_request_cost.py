"""benchmarks/bench_request_cost.py in its tiny mode: one small request per path, all in one
fresh process, on the tiny digits export that the export-fidelity benchmark's tiny run keeps."""

import pytest

from bench_harness import read_results, run_script

PATHS = {"serving_default", "serving_bytes_png", "serving_bytes_jpeg", "onnx", "edge_png",
         "loader"}


@pytest.mark.bench_tiny
def test_bench_request_cost_tiny(tmp_path, export_fidelity_tiny):
    _, workdir = export_fidelity_tiny
    export = workdir / "exports" / "digits"
    out = tmp_path / "request_cost.json"
    run_script("bench_request_cost", "--tiny", "--export", export, "--out", out, cwd=tmp_path)
    results = read_results(out, "bench_request_cost", "--tiny", "--export")
    assert results["export"]["name"] == "digits" and results["export"]["channels"] == 1
    assert set(results["bounds"]) == {"max_side", "max_batch", "max_pixels"}
    assert results["targets"] == {"cpu_s": 2.0, "memory_mib": round(500e6 / 2 ** 20, 1)}
    rows = results["requests"]
    assert {row["path"] for row in rows} == PATHS
    for row in rows:
        assert row["repeats"] == 1 and row["cpu_s"] >= 0 and row["wall_s"] >= 0  # rounded
        assert row["pixels"] == row["batch"] * row["height"] * row["width"]
        assert row["memory_mib"] >= row["request_mib"] >= 0
    # One file a pixel wider than the bound, on serving_bytes: refused from its header.
    side = results["bounds"]["max_side"]
    beyond = [row for row in rows if row["case"].startswith("beyond")]
    assert [(row["path"], row["batch"], row["height"], row["width"]) for row in beyond] == \
        [("serving_bytes_png", 1, 8, side + 1)]
    assert beyond[0]["refused"].startswith("refused before decoding") and \
        f"[1, {side}]" in beyond[0]["refused"] and f"8 {side + 1}" in beyond[0]["refused"]
    assert all(row["refused"] is None for row in rows if row not in beyond)
    # The tiny mode measures no request at the bounds, so it claims nothing about them.
    assert results["at_bounds"] == {} and results["within_targets"] is None
