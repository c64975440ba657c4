"""Are clusters from the train steps' features as good as from a full embedding pass?

    python benchmarks/bench_bank_clusters.py --data-dir images_background_small1
        # -> benchmarks/results/bank_clusters.json
    python benchmarks/bench_bank_clusters.py --tiny --data-dir OMNIGLOT_LIKE_FOLDER

Trains the Omniglot benchmark's DnC run (K = 4 fixed, 30 epochs, as bench_dnc.py) with each
cluster walked without replacement (`--batch-order walk`) and re-clustering on the train steps'
features (`--recluster-features training`). At every clustering and division it also clusters a
full embedding pass (the papers' way) with the same k-means seed, and records the adjusted Rand
index between the two assignments (with `--normalization renorm`, of a Conv-4 trained with
batch renormalisation, whose train steps normalise as inference does), the fraction of images
the bank had to embed afresh (`unseen_fraction`: those whose row no step rewrote since the
previous re-clustering and that had served it already), and the seconds of each route. An ARI
of 1 means the same partition; two k-means runs of the same features with different seeds
give the reference level of agreement (`seed_ari`).
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_dnc  # noqa: E402
import common  # noqa: E402

from dnc_keras import callbacks as dnc_callbacks  # noqa: E402
from dnc_keras.clustering import ClusteringError  # noqa: E402
from dnc_keras.training import job  # noqa: E402
from dnc_keras.training.config import TrainConfig  # noqa: E402
from dnc_keras_cli.options import NORMALIZATIONS  # noqa: E402


class ComparingScheduleCallback(dnc_callbacks.DnCScheduleCallback):
    """The schedule's callback, clustering the bank's features as configured, and a full pass
    beside it for comparison (its result is recorded, never used)."""

    comparisons = []

    def _clustered(self, fn):
        from sklearn.metrics import adjusted_rand_score

        start = time.perf_counter()
        bank = super()._clustered(fn)
        bank_seconds = time.perf_counter() - start
        unseen = self._embedded
        start = time.perf_counter()
        features = self.model.embed(self.images, output=self.cluster_on,
                                    batch_size=self.batch_size)
        embed_seconds = time.perf_counter() - start
        row = {"epoch": self._current_epoch,
               "unseen_fraction": unseen / len(self.images),
               "bank_seconds": round(bank_seconds, 3),
               "full_pass_embed_seconds": round(embed_seconds, 3)}
        try:
            full = fn(features)
            row["ari"] = float(adjusted_rand_score(full, bank))
            # Agreement of the full pass with itself under another k-means seed: the noise level.
            seed = self.seed
            self.seed = seed + 1000
            try:
                row["seed_ari"] = float(adjusted_rand_score(full, fn(features)))
            finally:
                self.seed = seed
        except ClusteringError as error:
            row["full_pass_error"] = str(error)
        type(self).comparisons.append(row)
        return bank

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        super().on_epoch_begin(epoch, logs)


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("DNC_OMNIGLOT_DIR"),
                        help="Omniglot's images_background_small1 folder (default: the "
                        "DNC_OMNIGLOT_DIR variable)")
    parser.add_argument("--seeds", type=int, default=None, help="runs (default: 3; --tiny: 1)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="batch",
                        help="Conv-4's normalisation in training (renorm: the train steps' "
                        "features are computed as inference computes them)")
    common.add_out_argument(parser, "bank_clusters.json")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.tiny else 3)
    if args.tiny:
        args.epochs = 3
    args.out = common.resolve_out(args.out, "bank_clusters.json", args.tiny)
    return args


def main(argv=None):
    import tempfile

    args = parse_args(argv)
    if not args.data_dir or not os.path.isdir(args.data_dir):
        sys.exit(f"Omniglot not found at {args.data_dir}: pass --data-dir")
    settings = dict(dataset="omniglot", data_dir=os.path.abspath(args.data_dir), image_size=28,
                    epochs=args.epochs, embedding_dim=128, classes_per_batch=20,
                    samples_per_class=4, steps_per_epoch=2 if args.tiny else 17,
                    recluster_period=1 if args.tiny else 2, conquer_fraction=0.2,
                    plots=False, normalization=args.normalization,
                    **bench_dnc.VARIANTS["DnC K=4 fixed, walk, training features"])
    runs = []
    original, job.DnCScheduleCallback = job.DnCScheduleCallback, ComparingScheduleCallback
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for seed in range(args.seeds):
                ComparingScheduleCallback.comparisons = []
                config = TrainConfig(**settings, seed=seed,
                                     out=os.path.join(workdir, f"s{seed}"))
                result = job.run(config, verbose=0)
                runs.append({"seed": seed, "comparisons": ComparingScheduleCallback.comparisons,
                             "test": result["test"]})
                print(seed, ComparingScheduleCallback.comparisons, flush=True)
    finally:
        job.DnCScheduleCallback = original
    aris = [c["ari"] for r in runs for c in r["comparisons"] if "ari" in c]
    seed_aris = [c["seed_ari"] for r in runs for c in r["comparisons"] if "seed_ari" in c]
    unseen = [c["unseen_fraction"] for r in runs for c in r["comparisons"]]
    summary = {"ari_median": float(np.median(aris)) if aris else None,
               "ari_min": float(np.min(aris)) if aris else None,
               "seed_ari_median": float(np.median(seed_aris)) if seed_aris else None,
               "unseen_fraction_median": float(np.median(unseen)) if unseen else None,
               "unseen_fraction_max": float(np.max(unseen)) if unseen else None}
    print(summary)
    return common.write_results({"settings": settings, "runs": runs, "summary": summary},
                                args.out, argv, __file__)


if __name__ == "__main__":
    main()
