"""Inference latency and throughput of an export: ONNX Runtime vs the TF SavedModel.

    python benchmarks/bench_inference.py saved_models/glyphs [--repeats 50] [--threads 2]
        # -> benchmarks/results/inference.json (the committed one: --repeats 100)
    python benchmarks/bench_inference.py EXPORT_DIR --tiny   # seconds; the test suite's mode

The SavedModel's serving_default, the ONNX model and its edge variants get the same uint8
images of the model's input size at batch 1 (latency) and batch 64 (throughput) through the
whole serving graph (resize, scale, network, L2 norm), with the same number of intra-op
threads. Each figure is the median of `--repeats` timed calls after warm-up calls, the
runtimes taking turns. Prints a table and writes benchmarks/results/inference.json for the
glyphs model, inference_<export folder name>.json for another (`--out` to change). `--tiny`:
5 timed calls (one per round) after 1 warm-up call, into benchmarks/results/tiny/. It sets
TensorFlow's thread pools, which a process can do only before its runtime starts: run it in a
process of its own.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCHES = (1, 64)


def timed(calls, repeats, rounds=5, warmup=5):
    """{name: median seconds, best seconds} of each call. The runtimes take turns, `rounds`
    times `repeats / rounds` calls each, so a change in machine load (shared cores) hits them
    alike instead of whichever ran during it."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def default_out(export_dir):
    """inference.json for the published model (an export folder named glyphs), else
    inference_<folder name>.json."""
    name = os.path.basename(os.path.normpath(export_dir))
    return "inference.json" if name == "glyphs" else f"inference_{name}.json"


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", help="export folder written by `dnc-keras export`")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each runtime")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op threads for both runtimes (default: all cores)")
    common.add_out_argument(parser, "inference.json", note=" for an export folder named "
                            "glyphs, else inference_<folder name>.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.warmup = 5, 1
    args.out = common.resolve_out(args.out, default_out(args.export_dir), args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from dnc_keras.export import onnx as onnx_export
    from dnc_keras.export import read_manifest

    manifest = read_manifest(args.export_dir)
    shape = tuple(manifest["input"]["model_input_shape"])
    serve = tf.saved_model.load(os.path.join(args.export_dir, str(manifest["version"])))
    serve = serve.signatures["serving_default"]
    sessions = {"onnxruntime": onnx_export.session(
        os.path.join(args.export_dir, manifest["onnx"]["path"]), threads=args.threads)}
    for mode, variant in manifest.get("variants", {}).items():
        sessions[f"onnxruntime_{mode}"] = onnx_export.session(
            os.path.join(args.export_dir, variant["path"]), threads=args.threads)

    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    rows = []
    for batch in BATCHES:
        images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
        tensor = tf.constant(images)
        calls = {"tf_savedmodel": lambda: serve(images=tensor)["embeddings"].numpy()}
        for name, session in sessions.items():
            calls[name] = lambda session=session: onnx_export.run(session, images)
        for name, (median, best) in timed(calls, args.repeats, warmup=args.warmup).items():
            rows.append({"runtime": name, "batch": batch, "median_ms": round(median * 1e3, 3),
                         "best_ms": round(best * 1e3, 3),
                         "images_per_s": round(batch / median, 1)})

    result = {
        "command": common.command_line(__file__, argv),
        "model": {"name": manifest["name"], "version": manifest["version"],
                  "input": list(shape), "embedding_dim": manifest["embedding"]["dim"],
                  "parameters": manifest["model"]["parameters"],
                  "backbone": manifest["model"]["backbone"],
                  "trained": {k: manifest["source_run"]["config"].get(k)
                              for k in ("dataset", "epochs", "learners", "embedding_dim")},
                  "variants": manifest.get("variants", {})},
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads,
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    # Other processes share these cores; a load above the core count means
                    # the timings are slower and noisier than on an idle machine.
                    "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "software": {"tensorflow": tf.__version__,
                     "onnxruntime": __import__("onnxruntime").__version__},
        "repeats": args.repeats,
        "results": rows,
    }
    common.write_results(result, args.out, argv, __file__)
    print(f"{manifest['name']} v{manifest['version']}: input {shape}, "
          f"{args.threads} thread(s), median of {args.repeats}, load average "
          f"{result['machine']['load_average_1m']} on {os.cpu_count()} cores")
    print(f"{'runtime':22s} {'batch':>5s} {'median ms':>10s} {'images/s':>10s}")
    for row in rows:
        print(f"{row['runtime']:22s} {row['batch']:5d} {row['median_ms']:10.3f} "
              f"{row['images_per_s']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
