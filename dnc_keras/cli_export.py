"""CLI commands of the export extra: export, validate-export, build-index, search."""

import argparse
import json

from dnc_keras import serving_signatures as sig

QUANTIZE_CHOICES = ("int8", "float16")


def add_commands(commands):
    """Adds the commands to `dnc-keras`'s subparsers; each sets `handler`."""
    export = commands.add_parser(
        "export", help="export a trained run for TF Serving (SavedModel) and ONNX Runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Writes OUT/NAME/VERSION/ (SavedModel, TF Serving layout, with warm-up "
                    "requests), OUT/NAME/NAME.onnx and OUT/NAME/manifest.json, after checking "
                    "that Keras, the SavedModel and ONNX Runtime agree within 1e-5.")
    export.add_argument("run_dir", help="run folder written by `dnc-keras train`")
    export.add_argument("--name", required=True, help="model name (TF Serving's model name)")
    export.add_argument("--version", type=int, default=None,
                        help="version folder (default: one more than the highest present)")
    export.add_argument("--out", default="saved_models", help="export root folder")
    export.add_argument("--max-side", type=int, default=sig.DEFAULT_MAX_SIDE,
                        help="largest image height/width accepted at serving time")
    export.add_argument("--quantize", action="append", choices=QUANTIZE_CHOICES, default=[],
                        help="also write an edge variant NAME.<mode>.onnx and report its "
                             "MAP@R against float32 (repeatable)")
    invert = export.add_mutually_exclusive_group()
    invert.add_argument("--invert", dest="invert", action="store_const", const=True,
                        default=None, help="serve 1 - x (default: as the run's dataset did)")
    invert.add_argument("--no-invert", dest="invert", action="store_const", const=False)
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing version folder")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")
    export.set_defaults(handler=export_command)

    validate = commands.add_parser(
        "validate-export", help="check an export folder end to end (signatures, warm-up, "
        "ONNX checker, parity, variants)")
    validate.add_argument("export_dir", help="export folder, e.g. saved_models/NAME")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(handler=validate_command)

    build = commands.add_parser(
        "build-index", help="embed a gallery folder (one subfolder per class) into a faiss "
        "index", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("gallery", help="folder of <label>/<image> files")
    build.add_argument("--model", required=True, help="export folder, e.g. saved_models/NAME")
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--runtime", choices=("onnx", "savedmodel"), default="onnx")
    build.set_defaults(handler=build_index_command)

    search = commands.add_parser("search", help="top-k gallery matches of query images",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search.add_argument("index", help="index folder written by `dnc-keras build-index`")
    search.add_argument("images", nargs="+", help="query image files")
    search.add_argument("-k", type=int, default=5, help="matches per query")
    search.add_argument("--json", action="store_true",
                        help="print one JSON object per query")
    search.set_defaults(handler=search_command)


def export_command(args):
    from dnc_keras.export import export_run

    manifest = export_run(args.run_dir, args.name, version=args.version, out=args.out,
                          max_side=args.max_side, invert=args.invert,
                          quantize=tuple(dict.fromkeys(args.quantize)),
                          overwrite=args.overwrite)
    if args.json:
        print(json.dumps(manifest))
        return
    root = f"{args.out}/{manifest['name']}"
    parity = manifest["parity"]
    print(f"SavedModel: {root}/{manifest['version']}/ (signatures "
          f"{', '.join(manifest['savedmodel']['signatures'])})")
    print(f"ONNX:       {root}/{manifest['onnx']['path']}")
    print(f"Manifest:   {root}/manifest.json")
    print(f"Parity on {parity['images']} images: max |diff| "
          f"{max(parity['max_abs_diff'].values()):.1e} (tolerance {parity['tolerance']})")
    for mode, variant in manifest["variants"].items():
        line = (f"{mode}: {root}/{variant['path']} ({variant['bytes'] / 1e6:.2f} MB, "
                f"float32 {variant['float32_bytes'] / 1e6:.2f} MB), max |diff| "
                f"{variant['max_abs_diff']:.1e}")
        if "MAP@R" in variant:
            line += (f", MAP@R {variant['MAP@R_float32']:.4f} -> {variant['MAP@R']:.4f} on "
                     f"{variant['MAP@R_images']} images")
        print(line)


def validate_command(args):
    from dnc_keras.export_validation import format_report, validate_export

    checks = validate_export(args.export_dir)
    if args.json:
        print(json.dumps([vars(c) for c in checks]))
    else:
        print(format_report(checks))
    failed = [c.name for c in checks if not c.passed]
    if failed:
        raise RuntimeError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def build_index_command(args):
    from dnc_keras.index import EmbeddingIndex

    index = EmbeddingIndex.from_folder(args.gallery, args.model, runtime=args.runtime)
    index.save(args.out)
    classes = len(set(index.labels.tolist()))
    print(f"Indexed {len(index)} images of {classes} classes ({index.dim}-d) into {args.out}")


def search_command(args):
    from dnc_keras.index import EmbeddingIndex

    index = EmbeddingIndex.load(args.index)
    found = index.search_files(args.images, k=args.k)
    for i, query in enumerate(args.images):
        matches = [{"label": found.labels[i, j], "distance": float(found.distances[i, j]),
                    "path": found.paths[i, j]} for j in range(found.indices.shape[1])]
        if args.json:
            print(json.dumps({"query": query, "matches": matches}))
            continue
        print(query)
        for rank, match in enumerate(matches, 1):
            print(f"  {rank:2d}. {match['label']:<16s} {match['distance']:.4f}  {match['path']}")
