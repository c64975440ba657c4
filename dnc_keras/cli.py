"""`dnc-keras`: train, evaluate (and, with the export extra, export / validate-export / search)."""

import argparse
import contextlib
import dataclasses
import json
import os
import sys

from dnc_keras.config import LOSSES, TrainConfig

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Flags of `train`: (flag, config field, argparse options). Every default is None so that
# only what is given on the command line overrides a --config file.
TRAIN_FLAGS = [
    ("--preset", "preset", dict(help="the papers' settings for a benchmark: cub, cars, sop, "
                                "inshop, vehicleid (flags override its values)")),
    ("--dataset", "dataset", dict(help="glyphs (default, embedded), digits, omniglot, folder; "
                                  "on disk: cub, cars, sop, inshop, vehicleid")),
    ("--data-dir", "data_dir", dict(help="the dataset's folder as its archive unpacks")),
    ("--train-classes", "train_classes", dict(
        choices=["standard", "all"], help="standard: the dataset's usual split (first half of "
        "the classes for omniglot); all: train on every class, for a model to deploy")),
    ("--image-size", "image_size", dict(type=int, help="side of the square input images "
                                        "(on-disk datasets: the crop, default 224)")),
    ("--resize-size", "resize_size", dict(type=int, help="on-disk datasets: shorter side before "
                                          "the eval centre crop (default 256 for 224)")),
    ("--color-mode", "color_mode", dict(choices=["rgb", "grayscale"])),
    ("--cache-images", "cache_images", dict(action="store_const", const=True,
                                            help="keep the training files' bytes in memory")),
    ("--no-check-images", "check_images", dict(action="store_const", const=False,
                                               help="skip decoding every image once before "
                                               "training (unreadable files are then fatal)")),
    ("--backbone", "backbone", dict(choices=["conv4", "resnet50"])),
    ("--weights", "weights", dict(help="backbone weights: imagenet, a local file, or none")),
    ("--embedding-dim", "embedding_dim", dict(type=int, help="d (default 128)")),
    ("--learners", "learners", dict(type=int, help="final number of learners K; 1 is the "
                                    "single-learner baseline (default 4)")),
    ("--subspaces", "subspaces", dict(choices=["fixed", "learned"])),
    ("--no-progressive", "progressive", dict(action="store_const", const=False,
                                             help="start with K learners instead of doubling "
                                             "from 1")),
    ("--recluster-period", "recluster_period", dict(type=int, help="T epochs (default 2)")),
    ("--cluster-on", "cluster_on", dict(choices=["features", "embedding"])),
    ("--recluster-features", "recluster_features", dict(
        choices=["pass", "training"],
        help="'pass' embeds all training images at each re-clustering (the papers); 'training' "
             "re-uses the features of the train steps since the last one (faster, "
             "docs/performance.md)")),
    ("--kmeans-backend", "kmeans_backend", dict(choices=["auto", "faiss", "sklearn"])),
    ("--conquer-fraction", "conquer_fraction", dict(type=float, help="last fraction of the "
                                                    "epochs trained on the full embedding")),
    ("--conquer-mode", "conquer_mode", dict(choices=["tpami", "cvpr"])),
    ("--loss", "loss", dict(choices=list(LOSSES))),
    ("--margin", "margin", dict(type=float, help="margin of the loss (alpha for margin)")),
    ("--epochs", "epochs", dict(type=int)),
    ("--classes-per-batch", "classes_per_batch", dict(type=int, help="P (default 20)")),
    ("--samples-per-class", "samples_per_class", dict(type=int, help="M (default 4)")),
    ("--steps-per-epoch", "steps_per_epoch", dict(type=int, help="fixed steps per epoch "
                                                  "(equal gradient steps across K)")),
    ("--learning-rate", "learning_rate", dict(type=float)),
    ("--weight-decay", "weight_decay", dict(type=float, help="coupled L2 (official: 1e-4)")),
    ("--augment", "augment", dict(action="store_const", const=True,
                                  help="random rotation and shift of training images")),
    ("--eval-every", "eval_every", dict(type=int, help="evaluate on the test classes every N "
                                        "epochs (monitoring only; 0: at the end)")),
    ("--validation-classes", "validation_classes", dict(
        type=float, help="fair-comparison mode: hold out this fraction of the training classes "
        "and keep the epoch with the best validation MAP@R (never the test classes)")),
    ("--no-nmi", "nmi", dict(action="store_const", const=False,
                             help="skip NMI (k-means with one cluster per test class)")),
    ("--seed", "seed", dict(type=int)),
    ("--seeds", "seeds", dict(type=int, help="repeat with seeds seed..seed+N-1 and report the "
                              "mean and 95%% interval")),
    ("--out", "out", dict(help="run folder (default runs/<timestamp>)")),
    ("--strategy", "strategy", dict(
        choices=["mirrored", "multi-worker"], help="train with the tf.distribute loop: "
        "mirrored (all GPUs of this machine) or multi-worker (a cluster described by TF_CONFIG; "
        "run the same command on every worker with the same shared --out); resumes from "
        "<out>/checkpoints (docs/distributed.md)")),
    ("--checkpoint-every", "checkpoint_every", dict(
        type=int, help="with --strategy: also checkpoint every N steps inside an epoch")),
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dnc-keras", description="Divide-and-conquer deep metric learning in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model; with no arguments, on the "
                                "embedded glyphs dataset",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for flag, field, options in TRAIN_FLAGS:
        train.add_argument(flag, dest=field, default=None, **options)
    train.add_argument("--config", help="JSON or YAML file of settings (flags override it)")
    train.add_argument("--json", action="store_true",
                       help="print the final metrics as one JSON line on stdout")
    train.add_argument("--dry-run", action="store_true",
                       help="print the resolved plan (images, classes, steps per epoch, K "
                       "schedule, evaluation) and exit without training")

    evaluate = commands.add_parser("evaluate", help="retrieval metrics of a trained run")
    evaluate.add_argument("run_dir", help="run folder written by `dnc-keras train`")
    evaluate.add_argument("--dataset", help="override the run's dataset")
    evaluate.add_argument("--data-dir", help="override the run's data folder")
    evaluate.add_argument("--json", action="store_true")

    _add_extra_commands(commands)
    return parser


def _add_extra_commands(commands):
    """Export, validate-export and search live in their own modules (export extra)."""
    try:
        from dnc_keras import cli_export
    except ImportError:
        return
    cli_export.add_commands(commands)


def train_command(args):
    from dnc_keras import job

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    preset = overrides.pop("preset", None)
    config = TrainConfig.resolve(preset=preset, path=args.config, **overrides)
    if args.dry_run:
        from dnc_keras import plan

        data = plan.build_plan(config, scan=False)
        _report(plan.plan_facts(config, data), plan.describe(config, data), args.json)
        job.check_learners(config, data.train_labels)
        return
    with _progress_to_stderr(args.json):
        if config.seeds > 1:
            from dnc_keras import repeats

            results = repeats.run_seeds(config)
            text = repeats.format_report(results)
        else:
            results = job.run(config)
            text = job.format_results(results)
    _report(results, text, args.json)


def evaluate_command(args):
    from dnc_keras import job, plan

    config_path = os.path.join(args.run_dir, "config.json")
    model_path = os.path.join(args.run_dir, "model.keras")
    for path in (config_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {args.run_dir} a dnc-keras run?")
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir}
    config = TrainConfig.from_file(config_path, **overrides)
    import keras

    model = keras.saving.load_model(model_path)
    data = plan.build_plan(config)
    if not data.evaluations:
        raise ValueError(f"{config.dataset} with train_classes={config.train_classes} has no "
                         "test classes to evaluate on")
    metrics = plan.evaluate(model, data.evaluations, data.recall_ks, nmi=config.nmi,
                            seed=config.seed)
    results = {"dataset": data.name, "run_dir": args.run_dir,
               "test_classes": max(len(set(ev.query_labels.tolist())) for ev in data.evaluations),
               "test": metrics["test"] if list(metrics) == ["test"] else metrics}
    text = "\n".join(f"{name:>8s} {k:>12s} {v:.4f}" for name, values in metrics.items()
                     for k, v in values.items())
    _report(results, text, args.json)


@contextlib.contextmanager
def _progress_to_stderr(enabled):
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _report(results, text, as_json):
    if as_json:
        print(json.dumps(results))
    else:
        print(text)
        if "run_dir" in results:
            print(f"Run folder: {results['run_dir']}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    handlers = {"train": train_command, "evaluate": evaluate_command}
    handler = handlers.get(args.command) or args.handler
    try:
        handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"dnc-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
