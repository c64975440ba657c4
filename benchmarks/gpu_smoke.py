"""One command for a machine with a GPU: the train-step, re-clustering, evaluation and inference
benchmarks, each in a process of its own, gathered into one results file with the devices
TensorFlow, faiss and ONNX Runtime saw.

    python benchmarks/gpu_smoke.py saved_models/glyphs        # -> benchmarks/results/gpu_smoke.json
    python benchmarks/gpu_smoke.py saved_models/glyphs --tiny # seconds per benchmark (the tests')
    python benchmarks/gpu_smoke.py EXPORT --benchmarks evaluation inference

EXPORT is an export folder for the inference benchmark (`dnc-keras export RUN`). Never run on
a GPU: no machine this project is measured on has one, so every figure in the repository is a
CPU figure and this script's GPU results are unmeasured. On a CPU it runs the same benchmarks
and records that no GPU was seen. A benchmark that fails is recorded with its exit code and the
last lines it printed; the others still run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# name -> script; the inference benchmark also takes the export folder.
BENCHMARKS = {"train_step": "bench_train_step.py", "recluster": "bench_recluster.py",
              "evaluation": "bench_evaluation.py", "inference": "bench_inference.py"}


def devices():
    """What each framework would run on: TensorFlow's GPUs, faiss's GPU count, ONNX Runtime's
    providers and the ones `serving/edge_infer.py` and `ExportedModel` choose from them."""
    import onnxruntime as ort
    import tensorflow as tf

    sys.path.insert(0, os.path.join(common.REPO, "serving"))
    import edge_infer

    from dnc_keras import faiss_devices

    return {"tensorflow_gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "faiss_gpus": faiss_devices.num_gpus(),
            "onnxruntime_available": ort.get_available_providers(),
            "onnxruntime_chosen": edge_infer.choose_providers()}


def run_benchmark(name, export_dir, tiny, folder):
    """Runs one benchmark in a subprocess; its results (or its failure) as a dict."""
    out = os.path.join(folder, f"{name}.json")
    argv = [sys.executable, os.path.join(common.HERE, BENCHMARKS[name])]
    if name == "inference":
        argv.append(str(export_dir))
    argv += (["--tiny"] if tiny else []) + ["--out", out]
    print(f"gpu_smoke: {name}: {' '.join(argv[1:])}", flush=True)
    done = subprocess.run(argv, cwd=common.REPO, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(out):
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"exit_code": done.returncode, "error": tail}
    with open(out) as f:
        return {"exit_code": 0, "results": json.load(f)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", help="export folder for the inference benchmark "
                                       "(dnc-keras export RUN writes one)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS),
                        default=list(BENCHMARKS),
                        help="which to run (default: %(default)s)")
    common.add_out_argument(parser, "gpu_smoke.json")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.export):
        parser.error(f"no export folder {args.export!r}; expected a folder written by "
                     "`dnc-keras export RUN` (e.g. saved_models/glyphs)")
    out = common.resolve_out(args.out, "gpu_smoke.json", args.tiny)
    seen = devices()
    print(f"gpu_smoke: devices {seen}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: run_benchmark(name, args.export, args.tiny, folder)
                for name in args.benchmarks}
    failed = [name for name, run in runs.items() if run["exit_code"] != 0]
    common.write_results({"devices": seen, "gpu_seen": bool(seen["tensorflow_gpus"]
                                                            or seen["faiss_gpus"]),
                          "tiny": args.tiny, "benchmarks": runs, "failed": failed},
                         out, argv, __file__, name="gpu_smoke")
    for name in failed:
        print(f"gpu_smoke: {name} failed (exit {runs[name]['exit_code']}): "
              f"{' | '.join(runs[name]['error'])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
