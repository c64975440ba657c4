"""benchmarks/bench_export_faults.py in its tiny mode: a subset of the fault cases, each a
fresh process, against the tiny digits run and export that the export-fidelity benchmark's
tiny run keeps (the `export_fidelity_tiny` fixture)."""

import pytest

from bench_harness import read_results, run_script

GROUPS = {"image files", "16-bit images", "tampered exports", "oversized requests"}


# In the slow set for the suite's 15 minutes (913 s with it on a fresh clone): the same
# refusals are asserted in-process by tests/export/test_tampered_exports.py and
# test_request_bounds.py; this runs them as fresh `dnc-keras` processes (python -m pytest -m slow).
@pytest.mark.slow
@pytest.mark.bench_tiny
def test_bench_export_faults_tiny(tmp_path, export_fidelity_tiny):
    _, workdir = export_fidelity_tiny
    run, export = workdir / "digits", workdir / "exports" / "digits"
    out = tmp_path / "export_faults.json"
    run_script("bench_export_faults", "--tiny", "--run", run, "--export", export, "--out", out,
               cwd=tmp_path)
    results = read_results(out, "bench_export_faults", "--tiny", "--run")
    assert results["subset"] == "tiny" and set(results["groups"]) == GROUPS
    rows = results["rows"]
    assert results["cases"] == len(rows) and results["passed"] == len(rows)
    failed = [row for row in rows if not row["passed"]]
    assert not failed, failed
    for row in rows:
        assert not row["traceback"]
        if row["exit"] == 2:  # one line, naming what was refused
            assert row["stderr_lines"] == 1 and row["first_error_line"]
    cases = {row["case"] for row in rows}
    assert "bomb via edge_infer.py" in cases
    assert "max_side lifted in the manifest (validate-export)" in cases
    assert {f"empty batch ({runtime})" for runtime in ("ExportedModel onnx", "edge_infer")} \
        <= cases
    bomb = next(row for row in rows if row["case"] == "bomb via embed (ONNX Runtime)")
    assert bomb["command"].startswith("dnc-keras embed ") and "refused before decoding" in \
        bomb["first_error_line"] and "[12000 12000 144000000]" in bomb["first_error_line"]
