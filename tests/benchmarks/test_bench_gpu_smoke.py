"""benchmarks/gpu_smoke.py on this CPU machine, tiny: it runs the chosen benchmarks in their own
processes, gathers their results files into one, records that no GPU was seen, and records a
benchmark that fails instead of stopping the others."""

import subprocess
import sys

import pytest

from bench_harness import BENCHMARKS, read_results, script_env


@pytest.mark.bench_tiny
def test_gpu_smoke_tiny_gathers_each_benchmark_and_records_a_failed_one(tmp_path):
    """Inference on a folder that is no export (each benchmark's tiny mode has its own test),
    then evaluation: the first fails, is recorded with its error and stops nothing; the second's
    results are gathered; the exit code is 1."""
    not_an_export = tmp_path / "empty"
    not_an_export.mkdir()
    out = tmp_path / "gpu_smoke.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_smoke.py"), str(not_an_export),
                           "--tiny", "--benchmarks", "inference", "evaluation", "--out",
                           str(out)],
                          cwd=tmp_path, env=script_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    results = read_results(out, "gpu_smoke", not_an_export, "--tiny")
    assert results["devices"]["tensorflow_gpus"] == [] and results["devices"]["faiss_gpus"] == 0
    assert results["devices"]["onnxruntime_chosen"] == ["CPUExecutionProvider"]
    assert results["gpu_seen"] is False and results["failed"] == ["inference"]
    assert list(results["benchmarks"]) == ["inference", "evaluation"]
    failed = results["benchmarks"]["inference"]
    assert failed["exit_code"] != 0 and failed["error"]
    assert "gpu_smoke: inference failed" in done.stderr
    inner = results["benchmarks"]["evaluation"]["results"]
    assert "benchmarks/bench_evaluation.py" in inner["provenance"]["command"]
    assert "--tiny" in inner["provenance"]["command"]
    assert inner["metrics"] and inner["seconds"]
