"""The main job as the README runs it: `dnc-keras train` with no arguments, in a fresh process.

    python benchmarks/bench_main_job.py            # writes benchmarks/results/main_job.json

Records what the command printed (retrieval on the unseen glyphs, next to raw pixels), its
training time and its wall time, for the README's first table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


# --tiny: the same command on the small digits set, one short epoch.
TINY_ARGS = ["--dataset", "digits", "--epochs", "1", "--learners", "2", "--embedding-dim", "16",
             "--steps-per-epoch", "2", "--no-plots"]


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_out_argument(parser, "main_job.json", note="; other --train-args are added to "
                            "the name")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="extra `dnc-keras train` flags (the README's job has none; put "
                        "last)")
    args = parser.parse_args(argv)
    default = common.default_name("main_job", args, parser, ["train_args"])
    if args.tiny:
        args.train_args = TINY_ARGS + args.train_args
    args.out = common.resolve_out(args.out, default, tiny=args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dnc_keras.cli", "train", "--json",
                                 "--out", os.path.join(workdir, "run"), *args.train_args],
                                cwd=workdir, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"dnc-keras train failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(workdir, "run", "config.json")) as f:
            config = json.load(f)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    label = describe(config) if not args.train_args else \
        "dnc_keras " + " ".join(args.train_args)
    if "raw_pixels" not in printed:
        sys.exit(f"dnc-keras train printed no raw-pixel baseline: {printed}")
    results = {"label": label, "test_classes": printed["test_classes"],
               "test": printed["test"], "raw_pixels": printed["raw_pixels"],
               "train_seconds": printed["train_seconds"], "seconds": round(seconds, 1)}
    common.write_results(results, args.out, argv, __file__)
    print(json.dumps(results))
    return args.out


def describe(config):
    """The README's name of the job a run folder's config.json records."""
    recipe = f"{config['preset']} recipe: " if config.get("preset") else ""
    backbone = {"conv4": "Conv-4", "resnet50": "ResNet-50"}.get(config["backbone"],
                                                                  config["backbone"])
    if config.get("normalization") == "renorm":
        backbone += " with batch renorm"
    route = (", re-clustering on the train steps' features"
             if config.get("recluster_features") == "training" else "")
    return (f"dnc_keras ({recipe}{backbone}, K = {config['learners']}, {config['epochs']} "
            f"epochs{route})")


if __name__ == "__main__":
    main()
