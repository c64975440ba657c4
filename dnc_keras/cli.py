"""The commands of `dnc-keras`, one function each; `dnc_keras_cli` parses their arguments.

`run(args)` dispatches and turns every user error into one line on stderr and exit code 2.
"""

import contextlib
import dataclasses
import json
import os
import sys

from dnc_keras.training.config import TrainConfig


def train_command(args):
    from dnc_keras.training import job

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    preset = overrides.pop("preset", None)
    config = TrainConfig.resolve(preset=preset, path=args.config, **overrides)
    _announce_recipe(config, overrides, sys.stderr if args.json else sys.stdout)
    if args.dry_run:
        from dnc_keras.training import plan

        data = plan.build_plan(config, scan=False)
        _report(plan.plan_facts(config, data), plan.describe(config, data), args.json)
        job.check_learners(config, data.train_labels)
        return
    with _progress_to_stderr(args.json):
        verbose = _verbosity(args)
        if config.seeds > 1:
            from dnc_keras.training import repeats

            results = repeats.run_seeds(config, verbose=verbose, overwrite=args.overwrite)
            text = repeats.format_report(results)
        else:
            results = job.run(config, verbose=verbose, overwrite=args.overwrite)
            text = job.format_results(results)
    _report(results, text, args.json)


def _announce_recipe(config, overrides, stream):
    """One line naming the dataset recipe a run starts from, and which of its values flags
    changed: a user who typed only the dataset's name sees what it trains with."""
    from dnc_keras.training.presets import load_preset
    from dnc_keras_cli.options import RECIPES

    if config.preset not in RECIPES:
        return
    recipe = load_preset(config.preset)
    shown = ", ".join(f"{key} {value}" + (f" (flag: {overrides[key]})" if key in overrides
                                          and overrides[key] != value else "")
                      for key, value in recipe.items() if key != "dataset")
    print(f"{config.preset} recipe ({RECIPES[config.preset]}, dnc_keras/presets/"
          f"{config.preset}.yaml): {shown}", file=stream, flush=True)


def evaluate_command(args):
    from dnc_keras import datasets
    from dnc_keras.export.build import load_run
    from dnc_keras.training import plan

    run = load_run(args.run_dir)
    model = run.model
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir}
    config = TrainConfig.from_file(os.path.join(args.run_dir, "config.json"), **overrides)
    if args.data_dir and not args.dataset and datasets.is_built_in(config.dataset):
        raise ValueError(f"{args.run_dir} was trained on {config.dataset}, which is built in: "
                         "to evaluate on a folder of <class>/<image> files, pass --dataset "
                         f"folder --data-dir {args.data_dir}")
    if args.dataset:
        config = _another_dataset(config, args, model.preprocessing)
    if args.classes == "all":
        config = dataclasses.replace(config, train_classes="all", validation_classes=0.0)
    data = plan.build_plan(config)
    if model.preprocessing is not None and data.preprocessing != model.preprocessing:
        raise ValueError(f"{args.run_dir}'s model was trained on images made by "
                         f"{model.preprocessing.describe()}; this data would be made by "
                         f"{data.preprocessing.describe()}")
    evaluations = data.evaluations if args.classes == "test" else [
        plan.Evaluation("test", data.train_images, data.train_labels)]
    if not evaluations:
        raise ValueError(f"{config.dataset} with train_classes={config.train_classes} has no "
                         "test classes to evaluate on (--classes all evaluates every class)")
    metrics = plan.evaluate(model, evaluations, data.recall_ks, nmi=config.nmi,
                            seed=config.seed)
    results = {"dataset": data.name, "run_dir": args.run_dir, "classes": args.classes,
               "test_classes": max(len(set(ev.query_labels.tolist())) for ev in evaluations),
               "test": metrics["test"] if list(metrics) == ["test"] else metrics}
    text = "\n".join(f"{name:>8s} {k:>12s} {v:.4f}" for name, values in metrics.items()
                     for k, v in values.items())
    _report(results, text, args.json)


def _another_dataset(config, args, record):
    """The run's config for evaluating on another dataset: its standard test classes (the run's
    --train-classes concerns its own data), its images made the way the model's were where the
    loader can (side and colour; a loader's own transforms, such as Omniglot's inversion, stay
    and are refused below if the model's differ)."""
    from dnc_keras import datasets

    changes = {"train_classes": "standard", "validation_classes": 0.0,
               "data_dir": args.data_dir}
    if record is not None:
        if not datasets.is_built_in(config.dataset):  # those are grey only
            changes["color_mode"] = "grayscale" if record.channels == 1 else "rgb"
        if record.size[0] == record.size[1]:
            changes["image_size"] = record.size[0]
    return dataclasses.replace(config, **changes)


def _verbosity(args):
    """Keras' verbose: 0 with --quiet; a live progress bar on a terminal; else one line per
    epoch (a bar redrawn into a log file or a pipe is thousands of characters per epoch)."""
    if getattr(args, "quiet", False):
        return 0
    return 1 if sys.stdout.isatty() else 2


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

    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"{args.model} does not exist: expected a run folder (dnc-keras "
                                "train) or an export folder (dnc-keras export, e.g. "
                                "saved_models/NAME)")
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

    from dnc_keras_cli import INDEX_PARAMETER_FLAGS

    _check_new_index_folder(args.out, args.overwrite)  # before minutes of embedding

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


def _check_new_index_folder(folder, overwrite=False):
    """Raises ValueError unless `folder` can take a new index: absent, empty, or (with
    `overwrite`) an index folder. An index already there holds ids, removals and a calibrated
    threshold that a rebuild would lose; a folder of other files is not an index folder."""
    from dnc_keras.export.index import META_FILE

    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise ValueError(f"--out {folder} is a file; expected a new or empty folder for the "
                         "index")
    if not os.listdir(folder):
        return
    meta = os.path.join(folder, META_FILE)
    if not os.path.exists(meta):
        raise ValueError(f"--out {folder} is a folder of other files; expected a new or empty "
                         "folder for the index")
    if not overwrite:
        raise ValueError(f"--out {folder} already holds an index; pass --overwrite to replace "
                         "it (its ids, removals and calibrated threshold are lost), or add "
                         "images to it with `dnc-keras index-add`")


def _describe_kind(index):
    from dnc_keras.export import faiss_index

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
    advice = faiss_index.slow_ivf_advice(index.kind, index.parameters)
    return line + (f"\n{advice}" if advice else "")


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
    if not args.again:
        _refuse_paths_twice(index, paths, args.index)
    ids = index.add_files(paths, labels)
    index.save(args.index)
    if args.json:
        for i, path, label in zip(ids.tolist(), paths, labels):
            print(json.dumps({"id": i, "label": label, "path": path}))
        return
    where = f"id {ids[0]}" if len(ids) == 1 else f"ids {ids[0]}-{ids[-1]}"
    print(f"Added {_items_count(len(ids))} ({where}) to {args.index}; it holds {len(index)}")


def _refuse_paths_twice(index, paths, index_folder):
    """Raises, before anything is embedded, if an image would be stored twice: a path the
    index already holds, or one given twice in this call (a file and its folder, say)."""
    from dnc_keras.export.index import shorten

    again = "pass --again to add them under new ids as well"
    held = index.held_paths(paths)
    if held:
        raise ValueError(f"{_items_count(len(held))} already in {index_folder}: "
                         f"{shorten(held, 3)}; {again}, or remove them first "
                         "(`dnc-keras index-remove --paths`)")
    seen, twice = set(), []
    for path in paths:
        key = os.path.abspath(path)
        if key in seen:
            twice.append(path)
        seen.add(key)
    if twice:
        raise ValueError(f"{_items_count(len(twice))} given twice: {shorten(twice, 3)}; {again}")


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
    if args.json:
        print(json.dumps({"index": args.index, "removed": int(removed), "items": len(index),
                          "hidden": hidden, "compacted": int(dropped)}))
        return
    note = (f"; {hidden} removed items stay in the hnsw graph, hidden from search (--compact "
            "rebuilds it)" if hidden else "")
    note += f"; the graph was rebuilt without {dropped} removed items" if dropped else ""
    if args.compact and index.kind != "hnsw":
        note += f"; --compact: nothing to rebuild, a {index.kind} index deletes in place"
    print(f"Removed {_items_count(removed)} from {args.index}; it holds {len(index)}{note}")


def _items_count(n):
    return f"{n} item" if n == 1 else f"{n} items"


def calibrate_command(args):
    from dnc_keras.export.index import EmbeddingIndex, list_gallery

    index = EmbeddingIndex.load(args.index)
    paths, labels = list_gallery(args.data, "--data folder")
    # Both folders are checked before the calibration's embedding work.
    test_paths, test_labels = list_gallery(args.test, "--test folder") if args.test else ([], [])
    calibration = index.calibrate_files(paths, labels, args.precision)
    calibration["data"] = os.path.abspath(args.data)
    report = {"index": args.index, "calibration": calibration}
    if args.test:
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
    if calibration["calibrated_on"]["unknown_queries"] == 0:
        print(f"Note: every class of {args.data} is in the index: the threshold was chosen "
              "without a query to say 'unknown' to; add classes absent from the gallery")
    if args.test:
        shared = report["test"]["classes_shared_with_calibration"]
        print(_describe_open_set("test", report["test"]) + f"; {shared} classes shared with "
              "the calibration data")


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


def run(args):
    """Runs the parsed command; returns the exit code."""
    handlers = {"train": train_command, "evaluate": evaluate_command, "embed": embed_command,
                "export": export_command, "validate-export": validate_command,
                "build-index": build_index_command, "search": search_command,
                "index-add": index_add_command, "index-remove": index_remove_command,
                "calibrate": calibrate_command}
    from dnc_keras import progress

    # --quiet: no bars for this command (an unforced setting defers to stderr being a tty).
    quiet = progress.forced(False) if getattr(args, "quiet", False) else contextlib.nullcontext()
    try:
        with quiet:
            handlers[args.command](args)
    except ModuleNotFoundError as error:
        print(f"dnc-keras {args.command}: error: {error.name} is not installed; this command "
              "needs the export extra: pip install 'dnc_keras[export]'", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"dnc-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    """`python -m dnc_keras.cli ...`, as `dnc-keras ...`."""
    from dnc_keras_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
