"""`dnc-keras`: argument parsing; every command calls one function of the package.

train, evaluate; with the export extra: export, validate-export, embed, build-index, search,
index-add, index-remove, calibrate.
"""

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
    ("--no-plots", "plots", dict(action="store_const", const=False,
                                 help="skip the training-curve and t-SNE plots")),
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
    """export, validate-export, embed and the index commands (the export extra)."""
    from dnc_keras.export.onnx import QUANTIZE_MODES
    from dnc_keras.export.signatures import DEFAULT_BOUNDS

    export = commands.add_parser(
        "export", help="export a trained run for TF Serving (SavedModel) and ONNX Runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Writes OUT/NAME/VERSION/ (SavedModel, TF Serving layout, with warm-up "
                    "requests), OUT/NAME/NAME.onnx and OUT/NAME/manifest.json, after checking "
                    "that the SavedModel and ONNX Runtime compute the run's own embeddings of "
                    "real files and its retrieval metrics.")
    export.add_argument("run_dir", help="run folder written by `dnc-keras train`")
    export.add_argument("--name", required=True, help="model name (TF Serving's model name)")
    export.add_argument("--version", type=int, default=None,
                        help="version folder (default: one more than the highest present)")
    export.add_argument("--out", default="saved_models", help="export root folder")
    export.add_argument("--max-side", type=int, default=DEFAULT_BOUNDS.max_side,
                        help="largest image height/width a request may send")
    export.add_argument("--max-batch", type=int, default=DEFAULT_BOUNDS.max_batch,
                        help="most images per request")
    export.add_argument("--max-pixels", type=int, default=DEFAULT_BOUNDS.max_pixels,
                        help="most pixels per request, over all its images")
    export.add_argument("--quantize", action="append", choices=QUANTIZE_MODES, default=[],
                        help="also write an edge variant NAME.<mode>.onnx and report its "
                             "MAP@R against float32 (repeatable)")
    export.add_argument("--data", default=None,
                        help="folder <class>/<image> to check retrieval on instead of the "
                             "run's test split (runs trained on every class)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing version folder")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")
    export.set_defaults(handler=export_command)

    validate = commands.add_parser(
        "validate-export", help="check an export folder end to end (hashes, signatures, "
        "bounds, warm-up, ONNX checker, parity, retrieval, variants)")
    validate.add_argument("export_dir", help="export folder, e.g. saved_models/NAME")
    validate.add_argument("--data", default=None,
                          help="folder <class>/<image> to measure retrieval on")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(handler=validate_command)

    build = commands.add_parser(
        "build-index", help="embed a gallery folder (one subfolder per class) into a faiss "
        "index", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="flat: exact, for up to about a hundred thousand items; ivf and hnsw: "
                    "approximate, for millions (docs/search.md). Without --nprobe / "
                    "--ef-search, the search parameter is tuned to --target-recall.")
    build.add_argument("gallery", help="folder of <label>/<image> files")
    build.add_argument("--model", required=True, help="export folder, e.g. saved_models/NAME")
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--runtime", choices=("onnx", "savedmodel"), default="onnx")
    build.add_argument("--index", dest="kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="faiss index kind")
    for flag, name, text in INDEX_PARAMETER_FLAGS:
        build.add_argument(flag, dest=name, type=int, default=None, help=text)
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="ivf/hnsw: recall@10 against exact search that nprobe/efSearch "
                            "are tuned for, on 1,000 gallery items held out while tuning")
    build.add_argument("--json", action="store_true", help="print the index's record as JSON")
    build.set_defaults(handler=build_index_command)

    add = commands.add_parser(
        "index-add", help="add images to an index under new ids (no rebuild)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add.add_argument("index", help="index folder written by `dnc-keras build-index`")
    add.add_argument("images", nargs="+", help="image files (need --label) or gallery folders "
                     "of <label>/<image>")
    add.add_argument("--label", help="class label of the image files given")
    add.add_argument("--json", action="store_true", help="print one JSON object per item added")
    add.set_defaults(handler=index_add_command)

    remove = commands.add_parser("index-remove", help="remove items from an index by id or path")
    remove.add_argument("index", help="index folder written by `dnc-keras build-index`")
    remove.add_argument("--ids", type=int, nargs="+", default=[], help="item ids")
    remove.add_argument("--paths", nargs="+", default=[], help="items' image paths")
    remove.add_argument("--compact", action="store_true",
                        help="hnsw: rebuild the graph without the removed items (from the "
                             "stored vectors); otherwise they are hidden from search")
    remove.set_defaults(handler=index_remove_command)

    calibrate = commands.add_parser(
        "calibrate", help="choose the distance beyond which search answers 'unknown'",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Searches the images of --data (folders <label>/<image>, none of them in "
                    "the index; classes of the gallery and, to learn to say unknown, classes "
                    "absent from it) and stores the largest distance threshold at which "
                    "precision = correct answers / answers given reaches --precision. "
                    "Recall = correct answers / queries of gallery classes.")
    calibrate.add_argument("index", help="index folder written by `dnc-keras build-index`")
    calibrate.add_argument("--data", required=True, help="validation folder <label>/<image>")
    calibrate.add_argument("--precision", type=float, default=0.95, help="target precision")
    calibrate.add_argument("--test", default=None,
                           help="folder <label>/<image> of other classes to report precision "
                                "and recall on at the chosen threshold")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(handler=calibrate_command)

    embed = commands.add_parser(
        "embed", help="embeddings of image files from a run folder (the run's evaluation "
        "path) or an export folder (SavedModel or ONNX Runtime), one JSON line per file",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    embed.add_argument("model", help="run folder (dnc-keras train) or export folder "
                       "(dnc-keras export, e.g. saved_models/NAME)")
    embed.add_argument("images", nargs="+", help="image files")
    embed.add_argument("--runtime", choices=("savedmodel", "onnx"), default="savedmodel",
                       help="for an export folder: which artifact computes the embeddings")
    embed.set_defaults(handler=embed_command)

    search = commands.add_parser("search", help="top-k gallery matches of query images",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search.add_argument("index", help="index folder written by `dnc-keras build-index`")
    search.add_argument("images", nargs="+", help="query image files")
    search.add_argument("-k", type=int, default=5, help="matches per query")
    search.add_argument("--threshold", type=float, default=None,
                        help="answer 'unknown' when the nearest match is farther (default: the "
                             "index's calibrated threshold, if any; inf: never)")
    search.add_argument("--json", action="store_true",
                        help="print one JSON object per query")
    search.set_defaults(handler=search_command)


# (flag, parameter name, help) of build-index's faiss parameters.
INDEX_PARAMETER_FLAGS = [
    ("--nlist", "nlist", "ivf: number of lists (default 4 sqrt(N), at most N/50)"),
    ("--nprobe", "nprobe", "ivf: lists searched per query (default: tuned)"),
    ("--hnsw-m", "M", "hnsw: links per node (default 32)"),
    ("--ef-construction", "efConstruction", "hnsw: beam width while building (default 80)"),
    ("--ef-search", "efSearch", "hnsw: beam width while searching (default: tuned)"),
]


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
    if model.preprocessing is not None and data.preprocessing != model.preprocessing:
        raise ValueError(f"{args.run_dir}'s model was trained on images made by "
                         f"{model.preprocessing.describe()}; this data would be made by "
                         f"{data.preprocessing.describe()}")
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


def export_command(args):
    from dnc_keras.export import export_run
    from dnc_keras.export.signatures import Bounds

    bounds = Bounds(max_side=args.max_side, max_batch=args.max_batch, max_pixels=args.max_pixels)
    manifest = export_run(args.run_dir, args.name, version=args.version, out=args.out,
                          bounds=bounds, quantize=tuple(args.quantize), overwrite=args.overwrite,
                          data=args.data)
    if args.json:
        print(json.dumps(manifest))
        return
    root = f"{args.out}/{manifest['name']}"
    parity = manifest["parity"]
    print(f"SavedModel: {root}/{manifest['version']}/ (signatures "
          f"{', '.join(manifest['savedmodel']['signatures'])})")
    print(f"ONNX:       {root}/{manifest['onnx']['path']}")
    print(f"Manifest:   {root}/manifest.json")
    print(f"Preprocessing: {manifest['preprocessing']['size']} "
          f"{manifest['preprocessing']['fit']} {manifest['preprocessing']['kernel']}")
    print(f"Parity on {parity['inputs']} real inputs ({len(parity['sizes'])} sizes): max |diff| "
          f"{max(parity['max_abs_diff'].values()):.1e} (tolerance {parity['tolerance']})")
    quality = manifest.get("quality", {})
    if quality.get("checked"):
        for runtime in ("savedmodel", "onnx"):
            for name, row in quality[runtime]["agreement"]["evaluations"].items():
                print(f"Retrieval {runtime:<10s} {name}: MAP@R {row['exported MAP@R']:.4f}, "
                      f"run {row['run MAP@R']:.4f} (gap {row['gap']:.4f})")
    else:
        print(f"Retrieval not checked: {quality.get('judged_on', 'no data')}")
    for mode, variant in manifest["variants"].items():
        line = (f"{mode}: {root}/{variant['path']} ({variant['bytes'] / 1e6:.2f} MB, "
                f"float32 {variant['float32_bytes'] / 1e6:.2f} MB)")
        if "MAP@R" in variant:
            line += (f", MAP@R {variant['MAP@R_float32']:.4f} -> {variant['MAP@R']:.4f} on "
                     f"{variant['MAP@R_images']} images")
        print(line)


def validate_command(args):
    from dnc_keras.export.validate import format_report, validate_export

    checks = validate_export(args.export_dir, data=args.data)
    if args.json:
        print(json.dumps([vars(c) for c in checks]))
    else:
        print(format_report(checks))
    failed = [c.name for c in checks if not c.passed]
    if failed:
        raise RuntimeError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def embed_command(args):
    import numpy as np

    if os.path.exists(os.path.join(args.model, "model.keras")):
        from dnc_keras import preprocessing
        from dnc_keras.export import load_run

        run = load_run(args.model)
        embeddings = run.model.embed(preprocessing.load_files(args.images, run.preprocessing))
    else:
        from dnc_keras.export import ExportedModel

        embeddings = ExportedModel(args.model, runtime=args.runtime).embed_files(args.images)
    for path, row in zip(args.images, np.asarray(embeddings)):
        print(json.dumps({"image": path, "embedding": [round(float(v), 7) for v in row]}))


def build_index_command(args):
    from dnc_keras.export.index import EmbeddingIndex

    parameters = {name: getattr(args, name) for _, name, _ in INDEX_PARAMETER_FLAGS
                  if getattr(args, name) is not None}
    index = EmbeddingIndex.from_folder(args.gallery, args.model, runtime=args.runtime,
                                       kind=args.kind, parameters=parameters,
                                       target_recall=args.target_recall)
    index.save(args.out)
    if args.json:
        print(json.dumps(index.describe()))
        return
    classes = len(set(index.labels.tolist()))
    print(f"Indexed {len(index)} images of {classes} classes ({index.dim}-d) into {args.out}")
    print(_describe_kind(index))


def _describe_kind(index):
    line = f"{index.kind} index of model {(index.model_hash or 'unrecorded')[:16]}"
    if index.parameters:
        line += ", " + ", ".join(f"{k}={v}" for k, v in index.parameters.items())
    tuning = index.tuning
    if tuning and tuning.get("sample"):
        line += (f" ({tuning['parameter']} tuned: recall@10 {tuning['recall_at_10']:.3f} on "
                 f"{tuning['sample']} held-out gallery items, target {tuning['target']}"
                 f"{'' if tuning['reached'] else ', NOT reached'})")
    elif tuning:
        line += f" ({tuning['note']})"
    return line


def index_add_command(args):
    from dnc_keras.export.index import EmbeddingIndex, list_gallery

    index = EmbeddingIndex.load(args.index)
    paths, labels = [], []
    for path in args.images:
        if os.path.isdir(path):
            found, found_labels = list_gallery(path)
            paths += found
            labels += found_labels
        elif args.label is None:
            raise ValueError(f"{path} is a file: give its class with --label (or pass a "
                             "folder of <label>/<image>)")
        else:
            paths.append(path)
            labels.append(args.label)
    ids = index.add_files(paths, labels)
    index.save(args.index)
    if args.json:
        for i, path, label in zip(ids.tolist(), paths, labels):
            print(json.dumps({"id": i, "label": label, "path": path}))
        return
    print(f"Added {len(ids)} items (ids {ids[0]}-{ids[-1]}) to {args.index}; it holds "
          f"{len(index)}")


def index_remove_command(args):
    import numpy as np

    from dnc_keras.export.index import EmbeddingIndex

    if not args.ids and not args.paths and not args.compact:
        raise ValueError("give the items to remove with --ids and/or --paths")
    index = EmbeddingIndex.load(args.index)
    ids = np.union1d(np.asarray(args.ids, np.int64), index.ids_of_paths(args.paths))
    removed = index.remove(ids) if len(ids) else 0
    dropped = index.compact() if args.compact else 0
    index.save(args.index)
    hidden = len(index.hidden)
    note = (f"; {hidden} removed items stay in the hnsw graph, hidden from search (--compact "
            "rebuilds it)" if hidden else "")
    note += f"; the graph was rebuilt without {dropped} removed items" if dropped else ""
    print(f"Removed {removed} items from {args.index}; it holds {len(index)}{note}")


def calibrate_command(args):
    from dnc_keras.export.index import EmbeddingIndex, list_gallery

    index = EmbeddingIndex.load(args.index)
    paths, labels = list_gallery(args.data)
    calibration = index.calibrate_files(paths, labels, args.precision)
    calibration["data"] = os.path.abspath(args.data)
    report = {"index": args.index, "calibration": calibration}
    if args.test:
        test_paths, test_labels = list_gallery(args.test)
        report["test"] = index.open_set_metrics_files(test_paths, test_labels)
        report["test"]["data"] = os.path.abspath(args.test)
        report["test"]["classes_shared_with_calibration"] = len(set(test_labels) & set(labels))
    index.save(args.index)
    if args.json:
        print(json.dumps(report))
        return
    print(f"Threshold {calibration['threshold']:.4f} stored in {args.index} (target precision "
          f"{args.precision})")
    print(_describe_open_set("calibration", calibration["calibrated_on"]))
    if args.test:
        print(_describe_open_set("test", report["test"]))


def _describe_open_set(name, figures):
    def rate(value):
        return "n/a" if value is None else f"{value:.3f}"

    return (f"{name:<11s} {figures['queries']} queries ({figures['known_queries']} of gallery "
            f"classes, {figures['unknown_queries']} of others): precision "
            f"{rate(figures['precision'])}, recall {rate(figures['recall'])}, unknown rejected "
            f"{rate(figures['unknown_rejection_rate'])}, accuracy {rate(figures['accuracy'])}")


def search_command(args):
    from dnc_keras.export.index import EmbeddingIndex

    index = EmbeddingIndex.load(args.index)
    found = index.search_files(args.images, k=args.k, threshold=args.threshold)
    for i, query in enumerate(args.images):
        matches = [{"id": int(found.ids[i, j]), "label": found.labels[i, j],
                    "distance": float(found.distances[i, j]), "path": found.paths[i, j]}
                   for j in range(found.ids.shape[1]) if found.ids[i, j] >= 0]
        unknown = bool(found.unknown[i])
        answer = None if unknown or not matches else matches[0]["label"]
        if args.json:
            print(json.dumps({"query": query, "label": answer, "unknown": unknown,
                              "threshold": found.threshold, "matches": matches}))
            continue
        if not matches:
            print(f"{query}: no match found")
        elif found.threshold is None:
            print(query)
        else:
            verdict = "unknown" if unknown else answer
            sign = ">" if unknown else "<="
            print(f"{query}: {verdict} (nearest {matches[0]['distance']:.4f} {sign} threshold "
                  f"{found.threshold:.4f})")
        for rank, match in enumerate(matches, 1):
            print(f"  {rank:2d}. {match['label']:<16s} {match['distance']:.4f}  "
                  f"id {match['id']:<6d} {match['path']}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    handlers = {"train": train_command, "evaluate": evaluate_command}
    handler = handlers.get(args.command) or args.handler
    try:
        handler(args)
    except ModuleNotFoundError as error:
        print(f"dnc-keras {args.command}: error: {error.name} is not installed; this command "
              "needs the export extra: pip install 'dnc_keras[export]'", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"dnc-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
