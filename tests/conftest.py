"""Fixtures shared by the whole suite.

The Omniglot copy lives beside the repository (../shared/data/omniglot_small1) or wherever
DNC_OMNIGLOT_DIR points; it is never copied into the repository. Tests that need it skip with a
message where it is absent, and fail under CI (the `CI` variable set), where a missing copy
means a broken set-up rather than a user without the data.
"""

import os
from pathlib import Path

import pytest
from needs import satisfied

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = Path(os.environ.get("DNC_OMNIGLOT_DIR",
                                   REPO / ".." / "shared" / "data" / "omniglot_small1"))


@pytest.fixture(scope="session")
def omniglot_dir():
    """The Omniglot background small 1 folder (136 characters x 20 drawings)."""
    satisfied(OMNIGLOT_DIR.is_dir(), f"Omniglot background small 1 not found at {OMNIGLOT_DIR}; "
            "set DNC_OMNIGLOT_DIR to run this")
    return OMNIGLOT_DIR.resolve()


# Tests sharing a session fixture that trains or exports share a worker under pytest-xdist
# (`-n 2 --dist loadgroup`, the README's command), so the fixture is built once; every other
# file is its own group, so module fixtures are built once too.
SHARED_FIXTURE_GROUPS = {
    "export": ("tests/export/",),
    # dist_harness.reference(): five training runs, once per worker process.
    "distributed": ("tests/distributed/test_mirrored.py", "tests/distributed/test_multi_worker.py",
                    "tests/distributed/test_resume.py"),
    "export_fidelity": ("tests/benchmarks/test_bench_export_fidelity.py",
                        "tests/benchmarks/test_bench_inference.py",
                        "tests/benchmarks/test_bench_export_faults.py",
                        "tests/benchmarks/test_bench_request_cost.py"),
}


# Groups of a minute or more on 2 cores (`--durations`), longest first. The README's command
# passes `--no-loadscope-reorder`, so xdist hands groups out in collection order and these
# start first: by its own order (most tests first) the one-test journeys came last, and one
# worker ran a journey alone for two minutes at the end of the suite.
LONG_GROUPS = ("tests/journeys/test_glyphs_journey.py", "export",
               "distributed", "tests/journeys/test_photos_journey.py",
               "export_fidelity", "tests/benchmarks/test_bench_faults.py",
               "tests/journeys/test_cub_journey.py", "tests/journeys/test_omniglot_journey.py",
               "tests/benchmarks/test_bench_served_quality.py")


def _group(path):
    for name, prefixes in SHARED_FIXTURE_GROUPS.items():
        if path.startswith(prefixes):
            return name
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks each test with its xdist group and puts the long groups first. First: xdist's own
    hook turns the marks into the `@group` suffix of node ids that its scheduler groups by.
    (pytest 9 derives node ids from another attribute, so xdist 3.8's suffix is lost there and
    groups are ignored: the test extra pins pytest 8.)"""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = Path(item.fspath).resolve().relative_to(REPO).as_posix()
            item.add_marker(pytest.mark.xdist_group(_group(path)))

    def rank(item):
        group = item.get_closest_marker("xdist_group").args[0]
        return LONG_GROUPS.index(group) if group in LONG_GROUPS else len(LONG_GROUPS)

    items.sort(key=rank)  # stable: every group keeps its tests' order
