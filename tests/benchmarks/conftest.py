"""Fixtures of the benchmark tests: data the tiny runs need, and the one tiny export shared by
the export-fidelity and inference benchmarks' tests (training and exporting take most of their
time)."""

import pytest

from bench_harness import run_script, write_omniglot_replica


@pytest.fixture(scope="session")
def omniglot_replica(tmp_path_factory):
    return write_omniglot_replica(tmp_path_factory.mktemp("omniglot_replica"))


@pytest.fixture(scope="session")
def export_fidelity_tiny(tmp_path_factory):
    """`bench_export_fidelity.py --tiny`, run once: (results path, its work folder). The work
    folder keeps the export, which the inference benchmark's test times."""
    root = tmp_path_factory.mktemp("export_fidelity")
    out, workdir = root / "export_fidelity.json", root / "work"
    run_script("bench_export_fidelity", "--tiny", "--out", out, "--workdir", workdir, cwd=root)
    return out, workdir


@pytest.fixture
def repo_on_pythonpath(monkeypatch):
    """This checkout first on PYTHONPATH, for the child processes a benchmark starts from its
    `main` in-process: they must measure the package under test, not another installed copy."""
    from bench_harness import script_env

    monkeypatch.setenv("PYTHONPATH", script_env()["PYTHONPATH"])
