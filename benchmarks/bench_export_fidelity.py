"""What is trained is what is served: each dataset's in-run retrieval next to its export's.

    python benchmarks/bench_export_fidelity.py --omniglot ../shared/data/omniglot_small1
        # -> benchmarks/results/export_fidelity.json
    python benchmarks/bench_export_fidelity.py --tiny          # the test suite's mode

For each case a run is trained with `dnc-keras train`, exported with `dnc-keras export` (each
in its own process), and the export's own checks are recorded: retrieval on the run's test
files through the SavedModel and ONNX Runtime against the run's metrics.json, and the parity of
their embeddings with the run's evaluation path on real files at several sizes. Cases: the main
job (glyphs), Omniglot with the README's command (when --omniglot is given), a folder of mixed
photographs (JPEG/PNG, EXIF-rotated, RGBA, palette, 16-bit) and a CUB-200-2011 replica with the
cub preset on a Conv-4 (both synthetic, written by the test suite's generators).

Writes benchmarks/results/export_fidelity.json (`--out` to change). `--tiny`: one case only,
`digits` (scikit-learn's digits, 1 epoch of 2 steps, K = 2, d = 16; still a training and an
export, each in its own process, so half a minute or more), into
benchmarks/results/tiny/export_fidelity.json.
`--workdir` keeps the runs and exports (by default a temporary folder, removed at the end).
"""

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the synthetic data generators
import common  # noqa: E402

TINY_CASE = ["--dataset", "digits", "--epochs", "1", "--learners", "2", "--embedding-dim", "16",
             "--classes-per-batch", "4", "--samples-per-class", "4", "--steps-per-epoch", "2",
             "--no-nmi"]


def dnc(*args):
    """Runs `dnc-keras ARGS` as `python -m dnc_keras.cli` with this Python; returns its stdout.

    From a neutral folder: `python -m` puts the working folder first on sys.path, so a checkout
    there would run instead of the package this process (and its provenance) uses."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "dnc_keras.cli", *map(str, args)], env=env,
                            capture_output=True, text=True, cwd=tempfile.gettempdir())
    if result.returncode:
        sys.exit(f"dnc-keras {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def case(name, workdir, train_args):
    run = os.path.join(workdir, name)
    results = json.loads(dnc("train", "--out", run, "--no-plots", "--json", *train_args)
                         .splitlines()[-1])
    manifest = json.loads(dnc("export", run, "--name", name, "--out",
                              os.path.join(workdir, "exports"), "--json"))
    quality = manifest["quality"]
    row = {"case": name, "train": " ".join(map(str, train_args)),
           "preprocessing": manifest["preprocessing"],
           "in_run": {k: results["test"][k] for k in ("R@1", "MAP@R")},
           "parity": {"inputs": manifest["parity"]["inputs"],
                      "sizes": len(manifest["parity"]["sizes"]),
                      "max_abs_diff": max(manifest["parity"]["max_abs_diff"].values())}}
    for runtime in ("savedmodel", "onnx"):
        served = quality[runtime]["metrics"]["test"]
        row[runtime] = {k: served[k] for k in ("R@1", "MAP@R")}
    print(json.dumps(row), flush=True)
    return row


def parse_args(argv=None):
    """The arguments, `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--omniglot", default=None, help="Omniglot background small 1 folder")
    parser.add_argument("--workdir", default=None,
                        help="folder to keep the runs and exports in (default: a temporary one)")
    common.add_out_argument(parser, "export_fidelity.json")
    args = parser.parse_args(argv)
    args.out = common.resolve_out(args.out, "export_fidelity.json", args.tiny)
    return args


def _workdir(path):
    """`path` (created, kept) or a temporary folder removed on exit."""
    if path is None:
        return tempfile.TemporaryDirectory()
    os.makedirs(path, exist_ok=True)
    return contextlib.nullcontext(os.path.abspath(path))


def main(argv=None):
    args = parse_args(argv)
    with _workdir(args.workdir) as workdir:
        if args.tiny:
            rows = [case("digits", workdir, TINY_CASE)]
        else:
            rows = full_cases(workdir, args.omniglot)
    return common.write_results({"rows": rows}, args.out, argv, __file__)


def full_cases(workdir, omniglot):
    """The rows of the glyphs, Omniglot (with `omniglot`), photos and CUB-replica cases."""
    import image_corpus
    import replicas

    rows = [case("glyphs", workdir, [])]
    if omniglot:
        rows.append(case("omniglot", workdir, ["--dataset", "omniglot", "--data-dir",
                                               os.path.abspath(omniglot),
                                               "--epochs", "30"]))
    photos = os.path.join(workdir, "photo_folder")
    image_corpus.write_photo_folder(photos, classes=16, per_class=12)
    rows.append(case("photos", workdir, ["--dataset", "folder", "--data-dir", photos,
                                         "--image-size", "48", "--epochs", "10"]))
    cub = replicas.build_cub(pathlib.Path(workdir) / "CUB_200_2011", classes=16, per_class=8,
                             photo_size=(300, 220))
    rows.append(case("cub", workdir, ["--preset", "cub", "--data-dir", cub, "--backbone",
                                      "conv4", "--weights", "none", "--epochs", "3",
                                      "--learners", "2", "--embedding-dim", "64",
                                      "--classes-per-batch", "8", "--samples-per-class",
                                      "4", "--learning-rate", "1e-3"]))
    return rows


if __name__ == "__main__":
    main()
