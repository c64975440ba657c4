"""DnC against the single-learner baseline on Omniglot, at equal gradient steps, over seeds.

    python benchmarks/bench_dnc.py --data-dir ../shared/data/omniglot_small1 --seeds 5
        # -> benchmarks/results/omniglot_dnc.json (+ .md)
    python benchmarks/bench_dnc.py --dataset glyphs --epochs 10 --seeds 3
        # -> benchmarks/results/glyphs_dnc.json (+ .md)
    python benchmarks/bench_dnc.py --seeds 3 --variants "DnC K=4 learned" "DnC K=8 fixed" \
        "DnC K=4 fixed, embedding" --out benchmarks/results/omniglot_ablation.json
    python benchmarks/bench_dnc.py --tiny --data-dir OMNIGLOT_LIKE_FOLDER    # seconds

Omniglot: classes sorted by name, first half trains, second half (unseen characters) tests;
glyphs: the main job's data and settings. Every variant uses the same Conv-4, embedding size,
loss, epochs and steps per epoch; only the DnC settings differ. Prints a table and writes it
beside the results (.md). The default `--out` follows the dataset and the variants, so runs of
different variants never overwrite each other: `<dataset>_dnc.json` for the default variants,
`<dataset>_<variants>.json` otherwise, `_loss-<loss>` added for another --loss (see
`default_out`). `--tiny` (the test suite's mode):
2 seeds of 2 epochs of 2 steps, no plots, into benchmarks/results/tiny/.
"""

import argparse
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common as bench_common  # noqa: E402

from dnc_keras.training import job  # noqa: E402
from dnc_keras.training.config import TrainConfig  # noqa: E402

# name -> settings that differ from the common ones
VARIANTS = {
    "single (K=1)": dict(learners=1),
    "DnC K=4 fixed": dict(learners=4, subspaces="fixed"),
    "DnC K=4 learned": dict(learners=4, subspaces="learned"),
    "DnC K=8 fixed": dict(learners=8, subspaces="fixed"),
    "DnC K=4 fixed, embedding": dict(learners=4, subspaces="fixed", cluster_on="embedding"),
    "DnC K=4 fixed, no division": dict(learners=4, subspaces="fixed", progressive=False),
    # Re-clustering on the features of the train steps (FeatureBank) instead of a full pass.
    "DnC K=4 fixed, training features": dict(learners=4, subspaces="fixed",
                                             recluster_features="training"),
    # One learner with one learned mask: does the gain of learned masks need the division?
    "single (K=1), learned mask": dict(learners=1, subspaces="learned"),
}
METRICS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI")
DEFAULT_VARIANTS = list(VARIANTS)[:2]


def default_out(dataset, variants, loss="triplet_hard"):
    """The results file name of a run: `<dataset>_dnc.json` for the default variants (the
    README's Omniglot and glyphs tables), else `<dataset>_<slug of each variant>.json`; with
    another loss than the default, `_loss-<loss>` before the extension."""
    if list(variants) == DEFAULT_VARIANTS:
        name = f"{dataset}_dnc"
    else:
        name = f"{dataset}_" + "+".join(re.sub("-+", "-", _slug(v)) for v in variants)
    return name + ("" if loss == "triplet_hard" else f"_loss-{loss}") + ".json"


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["omniglot", "glyphs"], default="omniglot")
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data",
                                                           "omniglot_small1"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="triplet_hard")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                        choices=list(VARIANTS), metavar="VARIANT",
                        help=f"any of {list(VARIANTS)}")
    parser.add_argument("--runs-dir", default=None,
                        help="folder of the run folders (default: runs/bench_<dataset>)")
    bench_common.add_out_argument(
        parser, "omniglot_dnc.json", note=" for omniglot with the default variants, "
        "glyphs_dnc.json for glyphs, <dataset>_<variants>.json for other variants")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seeds, args.epochs = 2, 2
    args.out = bench_common.resolve_out(
        args.out, default_out(args.dataset, args.variants, args.loss), args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)
    runs_dir = args.runs_dir or os.path.join("runs", f"bench_{args.dataset}")
    common = dict(epochs=args.epochs, loss=args.loss, embedding_dim=128, classes_per_batch=20,
                  samples_per_class=4, recluster_period=2, conquer_fraction=0.2)
    if args.dataset == "omniglot":
        if not os.path.isdir(args.data_dir):
            sys.exit(f"Omniglot not found at {args.data_dir}; pass --data-dir")
        common.update(dataset="omniglot", data_dir=args.data_dir, image_size=28,
                      steps_per_epoch=17)  # 1,360 training images // 80
    if args.tiny:
        common.update(steps_per_epoch=2, plots=False)
    runs = {}
    for name in args.variants:
        runs[name] = []
        for seed in range(args.seeds):
            out_dir = os.path.join(runs_dir, f"{_slug(name)}-s{seed}")
            config = TrainConfig(**{**common, **VARIANTS[name], "seed": seed, "out": out_dir})
            start = time.perf_counter()
            result = job.run(config, verbose=0)
            metrics = result["test"]
            runs[name].append({"seed": seed, "seconds": time.perf_counter() - start, **metrics})
            print(f"{name:28s} seed {seed}: " + " ".join(f"{m} {metrics[m]:.3f}"
                                                        for m in METRICS), flush=True)
    summary = {name: {m: {"mean": float(np.mean([r[m] for r in rs])),
                          "std": float(np.std([r[m] for r in rs], ddof=1)) if len(rs) > 1 else 0.0}
                      for m in METRICS} for name, rs in runs.items()}
    table = _table(summary, args.seeds)
    print(table)
    bench_common.write_results(
        {"command": bench_common.command_line(__file__, argv), "common": common,
         "variants": {n: VARIANTS[n] for n in runs}, "runs": runs, "summary": summary},
        args.out, argv, __file__)
    bench_common.write_atomic(os.path.splitext(args.out)[0] + ".md", table + "\n")
    return args.out


def _table(summary, seeds):
    lines = [f"| variant ({seeds} seeds, mean ± std) | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}"
                                                for m in METRICS) + " |")
    return "\n".join(lines)


def _slug(name):
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


if __name__ == "__main__":
    main()
