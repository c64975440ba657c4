"""Helpers of the benchmark tests (tests/benchmarks/): each script of benchmarks/ runs in its
`--tiny` mode (seconds, on small or synthetic data) with `--out` in a temporary folder, and its
results file is read back: the provenance every results file carries, and the figures the
script is meant to write.

Scripts run in-process through their `main(argv)` where they can; those that configure
TensorFlow's runtime (logical devices, thread pools) run as a subprocess of this interpreter,
with this checkout first on PYTHONPATH, so the package measured is the one under test.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
PROVENANCE_KEYS = {"command", "cwd", "dnc_keras", "git", "started", "date", "machine", "threads",
                   "load"}


def load_script(name):
    """benchmarks/<name>.py imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env():
    """The environment of a benchmark subprocess: this checkout first on PYTHONPATH, quiet TF."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": ""}


def run_script(name, *args, cwd, timeout=300):
    """Runs `python benchmarks/<name>.py ARGS` in a subprocess; fails the test with its stderr
    when it exits non-zero. Returns its stdout."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *map(str, args)],
                            cwd=cwd, env=script_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def read_results(path, script, *args):
    """The results file at `path`, after checking its provenance: the command names the script
    and the arguments given, and the package, git state, libraries, CPU, threads and load are
    those of this machine and this checkout."""
    with open(path) as f:
        results = json.load(f)
    record = results["provenance"]
    assert PROVENANCE_KEYS <= set(record)
    assert f"benchmarks/{script}.py" in record["command"]
    for arg in args:
        assert str(arg) in record["command"], (arg, record["command"])
    assert record["dnc_keras"]["path"] == str(REPO / "dnc_keras")
    assert record["dnc_keras"]["version"]
    for git in (record["git"], record["dnc_keras"]["git"]):
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)
    machine = record["machine"]
    assert machine["cpu"] and machine["tensorflow"] and machine["numpy"] == np.__version__
    assert record["threads"]["cpu_count"] == os.cpu_count()
    assert len(record["load"]["loadavg_1_5_15"]) == 3
    assert record["load"]["other_processes_cores"] >= 0
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["date"])
    assert record["started"] <= record["date"]
    return results


def ratio_ok(ratio):
    """A paired-ratios record ({"median", "min", "max", "all"}) of positive, finite ratios."""
    values = ratio["all"]
    return (all(v > 0 and math.isfinite(v) for v in values)
            and ratio["min"] <= ratio["median"] <= ratio["max"])


def summary_ok(entry, repeats):
    """A timing summary of `repeats` positive timings."""
    return (entry["repeats"] == repeats == len(entry["all_s"])
            and 0 < entry["min_s"] <= entry["median_s"] <= entry["max_s"])


def _drawing(path, strokes, seed):
    """A 105x105 black-on-white bilevel PNG like Omniglot's: the character's strokes, each
    drawing shifted by a few pixels, so that drawings of one character look alike."""
    shift = np.random.default_rng(seed).integers(-4, 5, 2)
    image = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(image).line([tuple(p + shift) for p in strokes], fill=0, width=6)
    image.save(path)


def write_omniglot_replica(root, alphabets=2, characters=21, drawings=4):
    """An Omniglot-like folder, <root>/<alphabet>/<characterNN>/*.png: with the defaults, 21
    training characters (enough for batches of 20 classes x 4 drawings) and 21 test ones."""
    for a in range(alphabets):
        for c in range(1, characters + 1):
            folder = Path(root) / f"Alphabet_{a}" / f"character{c:02d}"
            folder.mkdir(parents=True)
            strokes = np.random.default_rng(100 * a + c).integers(15, 90, (4, 2))
            for d in range(1, drawings + 1):
                _drawing(folder / f"{a}{c:02d}_{d:02d}.png", strokes, seed=1000 * a + 10 * c + d)
    return Path(root)
