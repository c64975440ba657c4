"""benchmarks/gpu_smoke.py on this CPU machine, tiny: it runs the chosen benchmarks in their own
processes, gathers their results files into one, records that no GPU was seen, and records a
benchmark that fails instead of stopping the others."""

import json
import subprocess
import sys

import pytest

from bench_harness import BENCHMARKS, read_results, run_script, script_env


@pytest.mark.bench_processes
def test_gpu_smoke_tiny_gathers_each_benchmark(tmp_path):
    """The evaluation benchmark only (each benchmark's tiny mode has its own test; inference
    needs an export, which the failure case below stands in for)."""
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    out = tmp_path / "gpu_smoke.json"
    run_script("gpu_smoke", export_dir, "--tiny", "--benchmarks", "evaluation", "--out", out,
               cwd=tmp_path, timeout=600)
    results = read_results(out, "gpu_smoke", export_dir, "--tiny")
    assert results["devices"]["tensorflow_gpus"] == [] and results["devices"]["faiss_gpus"] == 0
    assert results["devices"]["onnxruntime_chosen"] == ["CPUExecutionProvider"]
    assert results["gpu_seen"] is False and results["failed"] == []
    assert list(results["benchmarks"]) == ["evaluation"]
    inner = results["benchmarks"]["evaluation"]["results"]
    assert "benchmarks/bench_evaluation.py" in inner["provenance"]["command"]
    assert "--tiny" in inner["provenance"]["command"]
    assert inner["metrics"] and inner["seconds"]


def test_gpu_smoke_records_a_failed_benchmark_and_exits_1(tmp_path):
    not_an_export = tmp_path / "empty"
    not_an_export.mkdir()
    out = tmp_path / "gpu_smoke.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_smoke.py"), str(not_an_export),
                           "--tiny", "--benchmarks", "inference", "--out", str(out)],
                          cwd=tmp_path, env=script_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    results = json.loads(out.read_text())
    assert results["failed"] == ["inference"]
    assert results["benchmarks"]["inference"]["exit_code"] != 0
    assert results["benchmarks"]["inference"]["error"]
    assert "gpu_smoke: inference failed" in done.stderr
