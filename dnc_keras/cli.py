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
    ("--dataset", "dataset", dict(help="glyphs (default, embedded), digits, omniglot, folder")),
    ("--data-dir", "data_dir", dict(help="root folder of omniglot/folder datasets")),
    ("--train-classes", "train_classes", dict(
        choices=["standard", "all"], help="standard: the dataset's usual split (first half of "
        "the classes for omniglot); all: train on every class, for a model to deploy")),
    ("--image-size", "image_size", dict(type=int, help="side of the square input images")),
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
    ("--seed", "seed", dict(type=int)),
    ("--out", "out", dict(help="run folder (default runs/<timestamp>)")),
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
    config = (TrainConfig.from_file(args.config, **overrides) if args.config
              else TrainConfig(**overrides))
    with _progress_to_stderr(args.json):
        results = job.run(config)
    _report(results, job.format_results(results), args.json)


def evaluate_command(args):
    from dnc_keras import job
    from dnc_keras.evaluation import retrieval_metrics

    config_path = os.path.join(args.run_dir, "config.json")
    model_path = os.path.join(args.run_dir, "model.keras")
    for path in (config_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {args.run_dir} a dnc-keras run?")
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir}
    config = TrainConfig.from_file(config_path, **overrides)
    import keras

    model = keras.saving.load_model(model_path)
    data = job.load_data(config)
    if not len(data.y_test):
        raise ValueError(f"{config.dataset} with train_classes={config.train_classes} has no "
                         "test classes to evaluate on")
    metrics = retrieval_metrics(model.embed(data.x_test), data.y_test, ks=job.RECALL_KS)
    results = {"dataset": data.name, "test_classes": int(len(set(data.y_test.tolist()))),
               "run_dir": args.run_dir, "test": metrics}
    text = "\n".join(f"{k:>12s} {v:.4f}" for k, v in metrics.items())
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
