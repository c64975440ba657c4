"""How many seeds a paired comparison needs, from the spread of the ones already run.

    python benchmarks/seeds_needed.py omniglot_walks.json omniglot_recipe.json
    python benchmarks/seeds_needed.py omniglot_dnc.json --metric R@1 --half-width 0.02

For each paired difference in bench_dnc.py results files (variant - baseline, seed by seed):
its standard deviation over the seeds run, and the smallest number of seeds n whose two-sided
95% Student-t interval, t(0.975, n - 1) sd / sqrt(n), is at most `--half-width`. That is the
number of seeds at which a variant exactly as good as its baseline would have an interval
lower end of -half-width: what a non-inferiority claim with that margin needs (issue 13's
margin is 0.01 of MAP@R), and about what "ahead" by that much needs. It assumes the spread
measured on the few seeds run; with 5 seeds that estimate is itself rough. Reads only the
results files; prints a table.
"""

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

MAX_SEEDS = 10_000


def seeds_for(sd, half_width):
    """Smallest n >= 2 with t(0.975, n - 1) sd / sqrt(n) <= half_width (None beyond
    MAX_SEEDS)."""
    for n in range(2, MAX_SEEDS + 1):
        if stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= half_width:
            return n
    return None


def rows_of(path, metric, half_width):
    """(file, variant - baseline, seeds run, sd, seeds needed) per difference in a results
    file."""
    with open(path) as f:
        data = json.load(f)
    rows = []
    for variant, differences in data.get("differences", {}).items():
        difference = differences.get(metric)
        if not difference:
            continue
        sd = float(np.std(difference["per_seed"], ddof=1))
        rows.append((os.path.basename(path), f"{variant} - {data['baseline']}",
                     len(difference["per_seed"]), sd, seeds_for(sd, half_width)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+",
                        help="bench_dnc.py results files (a bare name is looked up in "
                        "benchmarks/results/)")
    parser.add_argument("--metric", default="MAP@R", choices=["R@1", "MAP@R", "NMI"])
    parser.add_argument("--half-width", type=float, default=0.01)
    args = parser.parse_args(argv)
    rows = []
    for name in args.files:
        path = name if os.path.exists(name) else os.path.join(common.RESULTS_DIR, name)
        if not os.path.exists(path):
            parser.error(f"results file not found: {name}")
        rows += rows_of(path, args.metric, args.half_width)
    shown = [(f, v, n, f"{sd:.3f}", "more than 10,000" if need is None else need)
             for f, v, n, sd, need in rows]
    print(common.table(shown, ["file", "difference", "seeds run", f"sd of {args.metric}",
                               f"seeds for +/- {args.half_width}"]))
    return rows


if __name__ == "__main__":
    main()
