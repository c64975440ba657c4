"""`dnc-keras`: the command line. Parses arguments before importing the package, so `--help`
and `--version` answer at once and without TensorFlow's start-up chatter; each command then
calls one function of `dnc_keras.cli`."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

from dnc_keras_cli.options import (BOUNDS_DEFAULTS, HNSW_DEFAULTS, QUANTIZE_MODES, RECIPES,
                                   RUNTIMES, TRAIN_OPTIONS)


def _version():
    try:
        return importlib.metadata.version("dnc_keras")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends "(default: ...)", less its noise: not where the help
    already names the default (a computed or tuned one), nor for a required argument, a switch
    that is off, or a flag with no value (None, an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or "default" in text or action.default is False
                or action.default is None or action.default == []):
            return text
        return super()._get_help_string(action)


def _add_train_flags(parser):
    for option in TRAIN_OPTIONS:
        if option.kind is bool:
            # Both --x and --no-x: a recipe or a config file may have set either value.
            help_text = f"{option.help} (default: {'on' if option.default else 'off'})"
            parser.add_argument(option.cli_flag, dest=option.name, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=help_text.replace("%", "%%"))
            continue
        default = option.unset if option.default is None else option.default
        help_text = f"{option.help} (default: {default})".replace("%", "%%")
        kwargs = {"choices": option.choices} if option.choices else {}
        parser.add_argument(option.cli_flag, dest=option.name, default=None,
                            type=option.kind if option.kind is not str else None,
                            metavar=None if option.choices else option.name.upper(),
                            help=help_text, **kwargs)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dnc-keras", description="Divide-and-conquer deep metric learning in Keras 3.")
    parser.add_argument("--version", action="version", version=f"dnc-keras {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model; with no arguments, on the embedded glyphs dataset",
        description="Flags override a --config file, which overrides a --preset or, without "
                    f"one, the dataset's recipe ({', '.join(RECIPES)} have one: "
                    "printed at the start, saved in config.json); the defaults shown apply "
                    "where neither sets a value.")
    _add_train_flags(train)
    train.add_argument("--config", help="JSON or YAML file of settings (flags override it)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the finished (or restart the unfinished) run in --out; "
                       "without it a finished run is refused and an unfinished one resumed")
    _add_output_flags(train, "the final metrics as one JSON line on stdout")
    train.add_argument("--dry-run", action="store_true",
                       help="print the resolved plan (data, batches, the DnC schedule, "
                       "evaluation) and exit without training")

    evaluate = commands.add_parser("evaluate", help="retrieval metrics of a trained run")
    evaluate.add_argument("run_dir", help="run folder written by `dnc-keras train`")
    evaluate.add_argument("--dataset", help="another dataset than the run's: its standard "
                          "test classes (for folder: the second half of the sorted classes), "
                          "images sized and coloured as the run's")
    evaluate.add_argument("--data-dir", help="another data folder than the run's")
    evaluate.add_argument("--classes", choices=("test", "all"), default="test",
                          help="test: the dataset's standard test classes; all: every class "
                          "of the data, each image a query against all the others (a folder "
                          "of classes the model never saw) (default: test)")
    _add_output_flags(evaluate, "the metrics as one JSON line")

    embed = commands.add_parser(
        "embed", help="embeddings of image files from a run folder (the run's evaluation "
        "path) or an export folder, one JSON line per file",
        formatter_class=DefaultsHelpFormatter)
    embed.add_argument("model", help="run folder (dnc-keras train) or export folder "
                       "(dnc-keras export, e.g. saved_models/NAME)")
    embed.add_argument("images", nargs="+", help="image files")
    embed.add_argument("--runtime", choices=RUNTIMES, default="savedmodel",
                       help="for an export folder: which artifact computes the embeddings")

    export = commands.add_parser(
        "export", help="export a trained run for TF Serving (SavedModel) and ONNX Runtime",
        formatter_class=DefaultsHelpFormatter,
        description="Writes OUT/NAME/VERSION/ (SavedModel, TF Serving layout, with warm-up "
                    "requests), OUT/NAME/NAME.onnx and OUT/NAME/manifest.json, after checking "
                    "that the SavedModel and ONNX Runtime compute the run's own embeddings of "
                    "real files and its retrieval metrics.")
    export.add_argument("run_dir", help="run folder written by `dnc-keras train`")
    export.add_argument("--name", required=True, help="model name (TF Serving's model name)")
    export.add_argument("--version", type=int, default=None,
                        help="version folder (default: one more than the highest present)")
    export.add_argument("--out", default="saved_models", help="export root folder")
    export.add_argument("--max-side", type=int, default=BOUNDS_DEFAULTS["max_side"],
                        help="largest image height/width a request may send")
    export.add_argument("--max-batch", type=int, default=BOUNDS_DEFAULTS["max_batch"],
                        help="most images per request")
    export.add_argument("--max-pixels", type=int, default=BOUNDS_DEFAULTS["max_pixels"],
                        help="most pixels per request, over all its images")
    export.add_argument("--quantize", action="append", choices=QUANTIZE_MODES, default=[],
                        help="also write an edge variant NAME.<mode>.onnx and report its "
                             "MAP@R against float32 (repeatable)")
    export.add_argument("--data", default=None,
                        help="folder <class>/<image> to check retrieval on instead of the "
                             "run's test split (runs trained on every class)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing version folder")
    _add_output_flags(export, "the manifest as JSON")

    validate = commands.add_parser(
        "validate-export", help="check an export folder end to end (hashes, signatures, "
        "bounds, warm-up, ONNX checker, parity, retrieval, variants)")
    validate.add_argument("export_dir", help="export folder, e.g. saved_models/NAME")
    validate.add_argument("--data", default=None,
                          help="folder <class>/<image> to measure retrieval on")
    _add_output_flags(validate, "the checks as JSON")

    build = commands.add_parser(
        "build-index", help="embed a gallery folder (one subfolder per class) into a faiss "
        "index", formatter_class=DefaultsHelpFormatter,
        description="flat: exact, for up to about a hundred thousand items; ivf and hnsw: "
                    "approximate, for millions (docs/search.md). Without --nprobe / "
                    "--ef-search, the search parameter is tuned to --target-recall.")
    build.add_argument("gallery", help="folder of <label>/<image> files")
    build.add_argument("--model", required=True, help="export folder, e.g. saved_models/NAME")
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--runtime", choices=RUNTIMES, default="onnx",
                       help="which artifact of the export embeds the gallery and the queries")
    build.add_argument("--index", dest="kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="faiss index kind")
    for flag, name, text in INDEX_PARAMETER_FLAGS:
        build.add_argument(flag, dest=name, type=int, default=None, help=text)
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="ivf/hnsw: recall@10 against exact search that nprobe/efSearch "
                            "are tuned for, on 1,000 gallery items held out while tuning")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an index already in --out (its ids, removals and "
                            "calibrated threshold are lost)")
    _add_output_flags(build, "the index's record as JSON")

    add = commands.add_parser(
        "index-add", help="add images to an index under new ids (no rebuild)",
        formatter_class=DefaultsHelpFormatter)
    add.add_argument("index", help="index folder written by `dnc-keras build-index`")
    add.add_argument("images", nargs="+", help="image files (need --label) or gallery folders "
                     "of <label>/<image>")
    add.add_argument("--label", help="class label of the image files given")
    add.add_argument("--again", action="store_true",
                     help="add images whose paths the index already holds, or that are given "
                          "twice (stored twice, under new ids); otherwise they are refused")
    _add_output_flags(add, "one JSON object per item added")

    remove = commands.add_parser("index-remove", help="remove items from an index by id or path",
                                 formatter_class=DefaultsHelpFormatter)
    remove.add_argument("index", help="index folder written by `dnc-keras build-index`")
    remove.add_argument("--ids", type=int, nargs="+", default=[], help="item ids")
    remove.add_argument("--paths", nargs="+", default=[], help="items' image paths")
    remove.add_argument("--compact", action="store_true",
                        help="hnsw: rebuild the graph without the removed items (from the "
                             "stored vectors); otherwise they are hidden from search")
    _add_output_flags(remove, "the counts as JSON")

    calibrate = commands.add_parser(
        "calibrate", help="choose the distance beyond which search answers 'unknown'",
        formatter_class=DefaultsHelpFormatter,
        description="Searches the images of --data (folders <label>/<image>, none of them in "
                    "the index; classes of the gallery and, to learn to say unknown, classes "
                    "absent from it) and stores a distance threshold: among those at which "
                    "precision = correct answers / answers given reaches --precision, the one "
                    "with the most recall (correct answers / queries of gallery classes), "
                    "placed halfway between the farthest query it accepts and the nearest it "
                    "rejects.")
    calibrate.add_argument("index", help="index folder written by `dnc-keras build-index`")
    calibrate.add_argument("--data", required=True, help="validation folder <label>/<image>")
    calibrate.add_argument("--precision", type=float, default=0.95, help="target precision")
    calibrate.add_argument("--test", default=None,
                           help="folder <label>/<image> of other classes to report precision "
                                "and recall on at the chosen threshold")
    _add_output_flags(calibrate, "the calibration as JSON")

    search = commands.add_parser("search", help="top-k gallery matches of query images, or "
                                 "'unknown' beyond the index's threshold",
                                 formatter_class=DefaultsHelpFormatter)
    search.add_argument("index", help="index folder written by `dnc-keras build-index`")
    search.add_argument("images", nargs="+", help="query image files")
    search.add_argument("-k", type=int, default=5, help="matches per query")
    search.add_argument("--threshold", type=float, default=None,
                        help="answer 'unknown' when the nearest match is farther (default: the "
                             "index's calibrated threshold, if any; inf: never)")
    _add_output_flags(search, "one JSON object per query")
    return parser


# (flag, parameter name, help) of build-index's faiss parameters.
INDEX_PARAMETER_FLAGS = [
    ("--nlist", "nlist", "ivf: number of lists (default 4 sqrt(N), at most N/50)"),
    ("--nprobe", "nprobe", "ivf: lists searched per query (default: tuned)"),
    ("--hnsw-m", "M", f"hnsw: links per node (default {HNSW_DEFAULTS['M']})"),
    ("--ef-construction", "efConstruction",
     f"hnsw: beam width while building (default {HNSW_DEFAULTS['efConstruction']})"),
    ("--ef-search", "efSearch", "hnsw: beam width while searching (default: tuned)"),
]


def _add_output_flags(parser, json_help):
    parser.add_argument("--json", action="store_true", help=f"print {json_help}")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are off anyway when stderr is not a "
                             "terminal)")


def main(argv=None):
    """Parses `argv`, then runs the command; returns the exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dnc_keras import cli

    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
