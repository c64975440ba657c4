"""DnC against the single-learner baseline on Omniglot, at equal gradient steps, over seeds.

    python benchmarks/bench_dnc.py --data-dir ../shared/data/omniglot_small1
    python benchmarks/bench_dnc.py --dataset glyphs --epochs 10 --out benchmarks/results/glyphs_dnc.json

Omniglot: classes sorted by name, first half trains, second half (unseen characters) tests;
glyphs: the main job's data and settings. Every variant uses the same Conv-4, embedding size,
loss, epochs and steps per epoch; only the DnC settings differ. Prints a table and writes
benchmarks/results/omniglot_dnc.json (+ .md).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from dnc_keras import job
from dnc_keras.config import TrainConfig

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["omniglot", "glyphs"], default="omniglot")
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data",
                                                           "omniglot_small1"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="triplet_hard")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:2],
                        help=f"any of {list(VARIANTS)}")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                      "omniglot_dnc.json"))
    args = parser.parse_args(argv)
    common = dict(epochs=args.epochs, loss=args.loss, embedding_dim=128, classes_per_batch=20,
                  samples_per_class=4, recluster_period=2, conquer_fraction=0.2)
    if args.dataset == "omniglot":
        if not os.path.isdir(args.data_dir):
            sys.exit(f"Omniglot not found at {args.data_dir}; pass --data-dir")
        common.update(dataset="omniglot", data_dir=args.data_dir, image_size=28,
                      steps_per_epoch=17)  # 1,360 training images // 80
    runs = {}
    for name in args.variants:
        runs[name] = []
        for seed in range(args.seeds):
            out = os.path.join("runs", f"bench_{args.dataset}", f"{_slug(name)}-s{seed}")
            config = TrainConfig(**{**common, **VARIANTS[name], "seed": seed, "out": out})
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
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["python"] + sys.argv), "common": common,
                   "variants": {n: VARIANTS[n] for n in runs}, "runs": runs,
                   "summary": summary}, f, indent=2)
    with open(args.out.replace(".json", ".md"), "w") as f:
        f.write(table + "\n")


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
