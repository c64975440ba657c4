"""benchmarks/seeds_needed.py: the seeds a paired interval of a given half-width needs."""

import json

import numpy as np
from scipy import stats

from bench_harness import load_script


def test_seeds_for_is_the_smallest_count_whose_interval_fits():
    tool = load_script("seeds_needed")
    for sd, half_width in ((0.054, 0.01), (0.02, 0.01), (0.03, 0.02)):
        n = tool.seeds_for(sd, half_width)

        def half(k):
            return stats.t.ppf(0.975, k - 1) * sd / np.sqrt(k)

        assert half(n) <= half_width < half(n - 1)
    assert tool.seeds_for(0.0, 0.01) == 2
    assert tool.seeds_for(10.0, 1e-4) is None


def test_rows_read_each_difference_of_a_results_file(tmp_path):
    tool = load_script("seeds_needed")
    per_seed = [0.02, -0.04, 0.01, 0.03, -0.02]
    results = {"baseline": "single", "differences": {
        "dnc": {"MAP@R": {"per_seed": per_seed}, "R@1": None}}}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(results))
    [(name, difference, run, sd, needed)] = tool.rows_of(str(path), "MAP@R", 0.01)
    assert (name, difference, run) == ("x.json", "dnc - single", 5)
    assert sd == np.std(per_seed, ddof=1) and needed == tool.seeds_for(sd, 0.01)
    assert tool.rows_of(str(path), "R@1", 0.01) == []
