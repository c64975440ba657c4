"""benchmarks/bench_index.py --tiny: runs in seconds and writes every figure the docs cite."""

import json
import os
import subprocess
import sys

import pytest

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_index.py")


def test_tiny_run_writes_its_results(tmp_path):
    out = tmp_path / "index.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, BENCHMARK, "--tiny", "--repeats", "1", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["settings"]["n"] == 10_000 and results["settings"]["queries"] == 500
    assert results["settings"]["threads"] == 1 and results["settings"]["tiny"] is True
    assert results["settings"]["build_threads"] == 1  # --threads, unless --build-threads
    assert results["provenance"]["command"].endswith(f"--out {out}")
    assert {"git", "machine", "date"} <= set(results["provenance"])
    assert 0.9 <= results["data"]["nearest_neighbour_same_class"] <= 1.0
    assert 0.5 <= results["data"]["exact_top10_same_class"] <= 1.0
    rows = results["indexes"]
    assert set(rows) == {"flat", "ivf", "hnsw"}
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["flat"]["parameters"] == {}
    assert rows["ivf"]["parameters"]["nlist"] == 200  # min(4 sqrt(10000) = 400, 10000 / 50)
    assert rows["hnsw"]["parameters"]["M"] == 32
    for kind in ("ivf", "hnsw"):
        row = rows[kind]
        assert row["tuning"]["sample"] == 1000 and row["tuning"]["target"] == 0.95
        assert 0.85 <= row["recall_at_10"] <= 1.0
        assert row["qps"] > 0 and row["build_s"] > 0 and row["index_bytes"] > 10_000 * 128 * 4
        assert row["sweep"][-1]["recall_at_10"] > row["sweep"][0]["recall_at_10"]
        assert all(0 < p["top1_same_class"] <= 1 and p["qps"] > 0 for p in row["sweep"])
        assert results["goal"][kind]["met"] == (
            row["recall_at_10"] >= 0.95 and row["speedup_over_flat"]["median"] >= 10)
    # Flat and HNSW, as build-index holds them (huge pages where Linux allows), each timed
    # in the same rounds against a copy on ordinary pages; IVF's lists are left alone.
    assert "small_pages" not in rows["ivf"] and "huge_pages_mib" not in rows["ivf"]
    for kind in ("flat", "hnsw"):
        small, flat_times = rows[kind]["small_pages"], rows["flat"]["search_s"]["all_s"]
        assert rows[kind]["huge_pages_mib"] >= 0
        assert small["search_s"]["repeats"] == 1
        # One round each: the ratios are of that round's times (all_s keeps 5 decimals).
        own, copy = rows[kind]["search_s"]["all_s"][0], small["search_s"]["all_s"][0]
        assert small["huge_over_small_pages"]["median"] == pytest.approx(copy / own, rel=2e-3)
        assert small["speedup_over_flat"]["median"] == pytest.approx(flat_times[0] / copy,
                                                                     rel=2e-3)
    recalls = [p["recall_at_10"] for p in rows["ivf"]["sweep"]]
    assert recalls == sorted(recalls)  # more lists probed find a superset
    assert "goal" in done.stdout and f"wrote {out}" in done.stdout


def test_one_kind_with_other_hnsw_parameters(tmp_path):
    """--kinds hnsw with --hnsw-m / --hnsw-ef-construction: flat (the exact neighbours) and
    an HNSW graph built with the given parameters, nothing else; --build-threads is recorded
    apart from the search threads."""
    out = tmp_path / "hnsw.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, BENCHMARK, "--tiny", "--repeats", "1", "--kinds",
                           "hnsw", "--hnsw-m", "16", "--hnsw-ef-construction", "40",
                           "--build-threads", "2", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["indexes"]) == {"flat", "hnsw"} and set(results["goal"]) == {"hnsw"}
    parameters = results["indexes"]["hnsw"]["parameters"]
    assert (parameters["M"], parameters["efConstruction"]) == (16, 40)
    assert results["settings"]["hnsw_overrides"] == {"M": 16, "efConstruction": 40}
    assert (results["settings"]["threads"], results["settings"]["build_threads"]) == (1, 2)
    assert "faiss threads 2 to build, 1 to search" in done.stdout
