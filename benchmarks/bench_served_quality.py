"""Retrieval of a served Omniglot model on the raw 105x105 drawings, against the run's own
evaluation: what a deployed model keeps of what was measured in training.

    python benchmarks/bench_served_quality.py --data-dir ../shared/data/omniglot_small1
    python benchmarks/bench_served_quality.py --data-dir ... --package-dir /tmp/old --label before
        # both -> benchmarks/results/served_omniglot.json, one entry per --label
    python benchmarks/bench_served_quality.py --tiny --data-dir OMNIGLOT_LIKE_FOLDER

Each seed trains with the README's Omniglot command (`dnc-keras train --dataset omniglot
--epochs 30`, standard split) in a fresh process, then exports in another, whose retrieval check
embeds the raw test files through the SavedModel and ONNX Runtime. `--package-dir` runs another
checkout of dnc_keras (PYTHONPATH), e.g. one from before the preprocessing record, which had no
such check: its rows hold that checkout's in-run evaluation and, for the same weights, what
this package serves on the raw drawings (the Omniglot record; the export's parity check holds
it to that path): a paired comparison, the same model through two preprocessing paths. Rows
go into one results file under their label.

Writes benchmarks/results/served_omniglot.json (`--out` to change). `--tiny` (the test suite's
mode, on any Omniglot-like folder of at least 20 training characters of 4 drawings): one seed,
1 epoch of 2 steps, no NMI, no plots; still a training and an export, each in its own process
(about half a minute); into benchmarks/results/tiny/served_omniglot.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

METRICS = ("R@1", "MAP@R")
TINY_TRAIN_ARGS = ("--steps-per-epoch", "2", "--no-nmi", "--no-plots")


def cli(package_dir, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if package_dir:
        env["PYTHONPATH"] = os.path.abspath(package_dir)
    # From a neutral folder: `python -m` puts the working directory first on sys.path, which
    # would shadow --package-dir with a checkout the command is run from.
    result = subprocess.run([sys.executable, "-m", "dnc_keras.cli", *map(str, args)], env=env,
                            capture_output=True, text=True, cwd=tempfile.gettempdir())
    if result.returncode:
        sys.exit(f"dnc-keras {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def one_seed(package_dir, data_dir, epochs, seed, workdir, extra=()):
    run = os.path.join(workdir, f"run_{seed}")
    results = json.loads(cli(package_dir, "train", "--dataset", "omniglot", "--data-dir",
                             data_dir, "--epochs", epochs, "--seed", seed, "--out", run,
                             "--json", *extra).splitlines()[-1])
    row = {"seed": seed, "in_run": {k: results["test"][k] for k in METRICS}}
    if package_dir:  # the same weights, served through this package's record
        row["served_now"] = served_now(run, data_dir)
    if os.path.exists(os.path.join(run, "preprocessing.json")):  # a checkout that can export
        manifest = json.loads(cli(package_dir, "export", run, "--name", "omniglot", "--out",
                                  os.path.join(workdir, f"sm_{seed}"), "--json"))
        for runtime in ("savedmodel", "onnx"):
            served = manifest["quality"][runtime]["metrics"]["test"]
            row[f"served_{runtime}"] = {k: served[k] for k in METRICS}
        row["parity_max_abs_diff"] = max(manifest["parity"]["max_abs_diff"].values())
    print(json.dumps(row), flush=True)
    return row


def served_now(run, data_dir):
    """Retrieval of a run's model on the raw test drawings through this package's Omniglot
    record: what `dnc-keras export` would serve (its parity check holds it to this path)."""
    import keras

    import dnc_keras  # noqa: F401  (registers the classes)
    from dnc_keras.datasets import omniglot
    from dnc_keras.datasets.sources import run_sources
    from dnc_keras.evaluation import retrieval_metrics
    from dnc_keras.preprocessing import load_files

    model = keras.saving.load_model(os.path.join(run, "model.keras"), compile=False)
    (test,) = run_sources("omniglot", data_dir)
    embeddings = model.embed(load_files(test.query, omniglot.preprocessing()))
    metrics = retrieval_metrics(embeddings, test.query_labels, nmi=False)
    return {k: metrics[k] for k in METRICS}


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="Omniglot background small 1")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--package-dir", default=None,
                        help="another dnc_keras checkout to run (default: the installed one)")
    parser.add_argument("--label", default="after")
    common.add_out_argument(parser, "served_omniglot.json",
                            note=", which keeps the rows of the other labels")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seeds, args.epochs = 1, 1
    args.out = common.resolve_out(args.out, "served_omniglot.json", args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)
    saved = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            saved = json.load(f)
    saved.pop("provenance", None)  # the last write's; each label keeps its own below
    extra = TINY_TRAIN_ARGS if args.tiny else ()
    with tempfile.TemporaryDirectory() as workdir:
        rows = [one_seed(args.package_dir, os.path.abspath(args.data_dir), args.epochs, seed,
                         workdir, extra) for seed in range(args.seeds)]
    package = args.package_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved.setdefault("runs", {})[args.label] = {
        "provenance": common.provenance(argv, __file__), "package": common.git_state(package),
        "epochs": args.epochs, "rows": rows}
    runs = saved["runs"]
    if rows and "served_now" in rows[0]:
        in_run = {r["seed"]: r["in_run"] for r in rows}
        now = {r["seed"]: r["served_now"] for r in rows}
        runs[args.label]["served_now_minus_in_run"] = [
            common.paired({s: m[k] for s, m in in_run.items()},
                          {s: m[k] for s, m in now.items()}, k)
            for k in METRICS]
    # Runs of two packages are not paired by their seed numbers (their random streams differ):
    # no difference between `before` and `after` is computed.
    saved.pop("served_after_minus_in_run_before", None)
    return common.write_results(saved, args.out, argv, __file__)


if __name__ == "__main__":
    main()
