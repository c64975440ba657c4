"""What is trained is what is served: each dataset's in-run retrieval next to its export's.

    python benchmarks/bench_export_fidelity.py --omniglot ../shared/data/omniglot_small1

For each case a run is trained with `dnc-keras train`, exported with `dnc-keras export` (each
in its own process), and the export's own checks are recorded: retrieval on the run's test
files through the SavedModel and ONNX Runtime against the run's metrics.json, and the parity of
their embeddings with the run's evaluation path on real files at several sizes. Cases: the main
job (glyphs), Omniglot with the README's command (when --omniglot is given), a folder of mixed
photographs (JPEG/PNG, EXIF-rotated, RGBA, palette, 16-bit) and a CUB-200-2011 replica with the
cub preset on a Conv-4 (both synthetic, written by the test suite's generators).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the synthetic data generators
import common  # noqa: E402

RESULTS = os.path.join(common.RESULTS_DIR, "export_fidelity.json")


def dnc(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "dnc_keras.cli", *map(str, args)], env=env,
                            capture_output=True, text=True)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--omniglot", default=None, help="Omniglot background small 1 folder")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    import image_corpus
    import replicas

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        rows.append(case("glyphs", workdir, []))
        if args.omniglot:
            rows.append(case("omniglot", workdir, ["--dataset", "omniglot", "--data-dir",
                                                   os.path.abspath(args.omniglot),
                                                   "--epochs", "30"]))
        photos = os.path.join(workdir, "photo_folder")
        image_corpus.write_photo_folder(photos, classes=16, per_class=12)
        rows.append(case("photos", workdir, ["--dataset", "folder", "--data-dir", photos,
                                             "--image-size", "48", "--epochs", "10"]))
        from pathlib import Path

        cub = replicas.build_cub(Path(workdir) / "CUB_200_2011", classes=16, per_class=8,
                                 photo_size=(300, 220))
        rows.append(case("cub", workdir, ["--preset", "cub", "--data-dir", cub, "--backbone",
                                          "conv4", "--weights", "none", "--epochs", "3",
                                          "--learners", "2", "--embedding-dim", "64",
                                          "--classes-per-batch", "8", "--samples-per-class",
                                          "4", "--learning-rate", "1e-3"]))
    with open(args.out, "w") as f:
        json.dump({"provenance": common.provenance(argv), "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
