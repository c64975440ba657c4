"""Fault injection: kill -9 at random points, NaN, a full disk; does every run come back?

    python benchmarks/bench_faults.py            # writes benchmarks/results/faults.json
    python benchmarks/bench_faults.py --tiny     # one point of three cases (the test suite's)

Trains a small digits run (6 epochs of 6 steps, K = 2, re-clustering every epoch,
`--deterministic`) once undisturbed, as the reference. Then, for each case, at `--points`
random points (drawn with `--seed`), runs the same `dnc-keras train` in a fresh process with
one fault injected by benchmarks/fault_child.py, and runs the user's remedy: the same command
again (for a kill or a full disk), or nothing (for a divergence, which must stop cleanly). A
point passes when the outcome is the expected one:

- kill -9 mid-epoch, mid-re-clustering, mid-checkpoint-write, between a checkpoint's data and
  its index, mid-write of model.keras, and mid-epoch under the distributed loop: the process
  dies, and the same command resumes it to the reference model, bit for bit (every weight) and
  with the same metrics and per-epoch history;
- NaN weights at a random step: exit 2 with one line naming the epoch and step, no model.keras,
  the last good checkpoint kept;
- a full disk while writing model.keras, history.json or metrics.json: exit 2 with one line
  naming the file, no partial or temporary file, and the same command then finishes the run to
  the reference model.

Timed kills (re-clustering, checkpoint write) fire after a random fraction of the duration
that step took in the reference run; the results count how many landed inside it.
"""

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from dnc_keras.training.run_folder import LOCK  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "fault_child.py")
EPOCHS, STEPS = 6, 6
TRAIN = ["train", "--dataset", "digits", "--epochs", str(EPOCHS), "--learners", "2",
         "--embedding-dim", "16", "--classes-per-batch", "4", "--samples-per-class", "4",
         "--steps-per-epoch", str(STEPS), "--recluster-period", "1", "--deterministic",
         "--no-plots", "--quiet", "--json"]
DISTRIBUTED = ["--strategy", "mirrored", "--checkpoint-every", "2"]
KILL_CASES = ("mid-epoch", "mid-re-clustering", "mid-checkpoint-write", "checkpoint-index",
              "model-write", "distributed-mid-epoch")
CASES = KILL_CASES + ("nan", "full-disk")
TINY_CASES = ("mid-epoch", "nan", "full-disk")
FULL_DISK_FILES = ("model.keras", "history.json", "metrics.json")
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1"}


def _train(out, fault=None, extra=(), cwd=None):
    """`dnc-keras train` (through fault_child.py when `fault`); returns the CompletedProcess."""
    argv = [*TRAIN, *extra, "--out", out]
    command = [sys.executable, CHILD, "--fault", fault, "--", *argv] if fault else \
        [sys.executable, "-m", "dnc_keras.cli", *argv]
    return subprocess.run(command, cwd=cwd, env=_ENV, capture_output=True, text=True,
                          timeout=900)


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _timings(stdout, kind):
    rows = [json.loads(line[len("TIMING "):]) for line in stdout.splitlines()
            if line.startswith("TIMING ")]
    return [r["seconds"] for r in sorted(rows, key=lambda r: r["index"]) if r["kind"] == kind]


def _landed(stdout, kind, index):
    """Whether the kill came inside step `index` of `kind` (started, never ended)."""
    lines = stdout.splitlines()
    return f"START {kind} {index}" in lines and f"END {kind} {index}" not in lines


def _run_facts(out):
    """What a finished run folder says of itself, for comparison with the reference."""
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    actions = [{k: a[k] for k in ("epoch", "action", "status", "cluster_sizes")}
               for a in history.pop("dnc_actions")]
    return {"test": metrics["test"], "history": history, "actions": actions}


def weights_hash(model_path):
    """SHA-256 of every weight of a saved model, in order (the file itself holds a date)."""
    import keras

    import dnc_keras  # noqa: F401  registers the classes

    model = keras.saving.load_model(model_path, compile=False)
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


class Bench:
    def __init__(self, workdir, rng, points):
        self.workdir, self.rng, self.points = workdir, rng, points
        self.references = {}
        self.counter = 0

    def folder(self, name):
        self.counter += 1
        return os.path.join(self.workdir, f"{self.counter:03d}-{name}")

    def reference(self, distributed=False):
        key = "distributed" if distributed else "fit"
        if key not in self.references:
            out = self.folder(f"reference-{key}")
            start = time.perf_counter()
            result = _train(out, "none", DISTRIBUTED if distributed else ())
            # With --json the command's progress (and the child's markers) go to stderr.
            markers = result.stdout + result.stderr
            if result.returncode:
                sys.exit(f"the reference run failed:\n{result.stderr[-3000:]}")
            self.references[key] = {
                "out": out, "seconds": round(time.perf_counter() - start, 1),
                "facts": _run_facts(out),
                "weights_sha256": weights_hash(os.path.join(out, "model.keras")),
                "action_seconds": _timings(markers, "action"),
                "save_seconds": _timings(markers, "save")}
        return self.references[key]

    # -- the cases ---------------------------------------------------------------------------
    def fault_points(self, case):
        """(fault, detail) pairs for `points` random points of a kill case."""
        ref = self.reference(case == "distributed-mid-epoch")
        total = EPOCHS * STEPS
        points = []
        for _ in range(self.points):
            if case in ("mid-epoch", "distributed-mid-epoch"):
                n = int(self.rng.integers(1, total))
                points.append((f"batch:{n}", {"epoch": (n - 1) // STEPS,
                                              "step": (n - 1) % STEPS}))
            elif case == "mid-re-clustering":
                i = int(self.rng.integers(len(ref["action_seconds"])))
                delay = float(self.rng.uniform(0, ref["action_seconds"][i]))
                points.append((f"action:{i + 1}:{delay:.4f}", {"action": i + 1}))
            elif case == "mid-checkpoint-write":
                i = int(self.rng.integers(len(ref["save_seconds"])))
                delay = float(self.rng.uniform(0, ref["save_seconds"][i]))
                points.append((f"save:{i + 1}:{delay:.4f}", {"save": i + 1}))
            elif case == "checkpoint-index":
                i = int(self.rng.integers(len(ref["save_seconds"])))
                points.append((f"save-index:{i + 1}", {"save": i + 1}))
            elif case == "model-write":
                points.append(("replace:model.keras", {}))
        return points

    def kill_case(self, case):
        distributed = case == "distributed-mid-epoch"
        ref = self.reference(distributed)
        extra = DISTRIBUTED if distributed else ()
        rows = []
        for fault, detail in self.fault_points(case):
            out = self.folder(case)
            first = _train(out, fault, extra)
            row = {"fault": fault, **detail, "exit": first.returncode,
                   "killed": first.returncode == -9}
            kind = fault.split(":")[0]
            if kind in ("action", "save"):
                row["landed_inside"] = _landed(first.stdout + first.stderr, kind,
                                               int(fault.split(":")[1]))
            second = _train(out, extra=extra)
            row["resume_exit"] = second.returncode
            if second.returncode == 0:
                printed = json.loads(_last_line(second.stdout))
                row["resumed_from"] = printed.get("resumed_from")
                same_weights = weights_hash(os.path.join(out, "model.keras")) == \
                    ref["weights_sha256"]
                row["same_weights"] = same_weights
                row["same_metrics_and_history"] = _run_facts(out) == ref["facts"]
            else:
                row["error"] = _last_line(second.stderr)
            row["passed"] = bool(row["killed"] and row.get("same_weights")
                                 and row.get("same_metrics_and_history"))
            rows.append(row)
        return rows

    def nan_case(self):
        rows = []
        for _ in range(self.points):
            n = int(self.rng.integers(1, EPOCHS * STEPS + 1))
            epoch, step = (n - 1) // STEPS, (n - 1) % STEPS
            out = self.folder("nan")
            result = _train(out, f"nan:{n}")
            line = _last_line(result.stderr)
            expected = f"dnc-keras train: error: training diverged at epoch {epoch} step {step}"
            checkpoints = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.index")))
            row = {"fault": f"nan:{n}", "epoch": epoch, "step": step,
                   "exit": result.returncode, "message": line,
                   "model_written": os.path.exists(os.path.join(out, "model.keras")),
                   "checkpoints": len(checkpoints)}
            # The last good checkpoint is the end of the epoch before the divergence.
            last = _latest_checkpoint_epoch(out)
            row["passed"] = (result.returncode == 2 and line.startswith(expected)
                             and len(result.stderr.strip().splitlines()) >= 1
                             and not row["model_written"]
                             and last == (epoch if epoch > 0 else None))
            rows.append(row)
        return rows

    def full_disk_case(self, names):
        ref = self.reference()
        rows = []
        for name in names:
            out = self.folder(f"full-disk-{name}")
            first = _train(out, f"full-disk:{name}")
            line = _last_line(first.stderr)
            expected = (f"dnc-keras train: error: cannot write {os.path.join(out, name)}: "
                        "the disk is full")
            # The run folder's lock is no leftover: the system released it with the process
            # (the rerun below takes it again).
            leftovers = [f for f in os.listdir(out) if f.startswith(".") and f != LOCK]
            row = {"fault": f"full-disk:{name}", "exit": first.returncode, "message": line,
                   "file_absent": not os.path.exists(os.path.join(out, name)),
                   "temporary_files_left": leftovers}
            second = _train(out)
            row["rerun_exit"] = second.returncode
            if second.returncode == 0:
                row["same_weights"] = weights_hash(os.path.join(out, "model.keras")) == \
                    ref["weights_sha256"]
            row["passed"] = bool(first.returncode == 2 and line == expected
                                 and row["file_absent"] and not leftovers
                                 and row.get("same_weights"))
            rows.append(row)
        return rows


def _latest_checkpoint_epoch(out):
    """The epoch the latest checkpoint of a run folder reached (None without one)."""
    folder = os.path.join(out, "checkpoints")
    if not os.path.exists(os.path.join(folder, "checkpoint")):
        return None
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(folder)
    reader = tf.train.load_checkpoint(latest)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("progress/epoch")]
    return int(reader.get_tensor(names[0])) if names else None


def summarise(case, rows):
    passed = sum(r["passed"] for r in rows)
    summary = {"case": case, "points": len(rows), "passed": passed,
               "outcome": f"{passed} of {len(rows)}"}
    landed = [r["landed_inside"] for r in rows if "landed_inside" in r]
    if landed:
        summary["landed_inside"] = f"{sum(landed)} of {len(landed)}"
    return summary


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_out_argument(parser, "faults.json")
    parser.add_argument("--points", type=int, default=10,
                        help="random points per kill and NaN case (--tiny: 1)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None,
                        help=f"cases to run (default: all; --tiny: {' '.join(TINY_CASES)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random points")
    args = parser.parse_args(argv)
    args.cases = args.cases or (TINY_CASES if args.tiny else CASES)
    args.points = 1 if args.tiny else args.points
    args.out = common.resolve_out(args.out, "faults.json", tiny=args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)
    cases, points, out = args.cases, args.points, args.out
    results = {"train": TRAIN, "distributed": DISTRIBUTED, "seed": args.seed,
               "points": points, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="dnc-faults-") as workdir:
        bench = Bench(workdir, np.random.default_rng(args.seed), points)
        for case in cases:
            start = time.perf_counter()
            if case in KILL_CASES:
                rows = bench.kill_case(case)
            elif case == "nan":
                rows = bench.nan_case()
            else:
                rows = bench.full_disk_case(FULL_DISK_FILES[:1] if args.tiny
                                            else FULL_DISK_FILES)
            summary = summarise(case, rows)
            summary["seconds"] = round(time.perf_counter() - start, 1)
            results["cases"][case] = {**summary, "rows": rows}
            print(json.dumps(summary), flush=True)
        results["references"] = {k: {key: v for key, v in ref.items() if key != "out"}
                                 for k, ref in bench.references.items()}
    results["all_passed"] = all(c["passed"] == c["points"] for c in results["cases"].values())
    common.write_results(results, out, argv, __file__)
    return 0 if results["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
