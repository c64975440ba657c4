"""Shared helpers of the benchmarks: interleaved timing, machine description, JSON results.

The machines these run on are small and shared, so a single timing means little. Every benchmark
times the things it compares in the same process, interleaved (A B C, A B C, ...), and reports
the median of the repeats and the ratio of medians; the spread (min-max) goes into the JSON so
a reader can see how noisy the run was.

Every benchmark writes its results through `write_results`, which puts a "provenance" key at
the top of the file (the exact command, package version and location, git commit and whether
the tree was dirty, library versions, CPU, threads, other processes' load, the date), so a
figure can be traced to the command that wrote it. Each has a distinct default `--out` in
benchmarks/results/ (`add_out_argument`, `resolve_out`); `--tiny` runs write to
benchmarks/results/tiny/ (not kept in git) unless given `--out`, never over a published file.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
TINY_DIR = os.path.join(RESULTS_DIR, "tiny")
# When and under what load the benchmark started: a benchmark imports this module first.
_STARTED = time.strftime("%Y-%m-%d %H:%M:%S %Z")
_LOAD_AT_START = os.getloadavg()


def interleaved(candidates, repeats, warmup=1, loads=None):
    """Times each callable `repeats` times, round-robin, after `warmup` untimed rounds.

    Args:
        candidates: dict name -> zero-argument callable (one timed unit of work each).
        repeats: timed rounds.
        warmup: untimed rounds first (tracing, caches, thread pools). Defaults to `1`.
        loads: optional dict, filled with name -> list of `other_load` per round (cores' worth
            of CPU other processes used meanwhile).

    Returns:
        dict name -> list of seconds, one per round.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            busy, own = busy_cpu_seconds(), sum(os.times()[:2])
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if loads is not None:
                loads.setdefault(name, []).append(other_load(
                    busy, sum(os.times()[:2]) - own, times[name][-1]))
    return times


def summary(seconds):
    """Median, min, max and relative spread ((max - min) / median) of a list of timings."""
    med = statistics.median(seconds)
    return {"median_s": med, "min_s": min(seconds), "max_s": max(seconds),
            "spread": (max(seconds) - min(seconds)) / med if med else 0.0,
            "repeats": len(seconds), "all_s": [round(s, 5) for s in seconds]}


def paired_ratios(numerator, denominator):
    """Per-round ratios of two interleaved series, and their median.

    Rounds ran back to back, so a round's ratio cancels most of the load other processes put on
    the machine at that moment; the median of the per-round ratios is the figure to report.
    """
    ratios = [a / b for a, b in zip(numerator, denominator)]
    out = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
           "all": [round(r, 4) for r in ratios]}
    out.update(ratio_interval(ratios))
    return out


def ratio_interval(ratios):
    """The geometric mean of per-round ratios with a two-sided 95% Student-t interval on their
    logarithms ({} with fewer than 2 rounds): "faster" needs the whole interval above 1."""
    import numpy as np
    from scipy import stats

    logs = np.log(np.asarray(ratios, float))
    if len(logs) < 2:
        return {}
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return {"geometric_mean": float(np.exp(logs.mean())),
            "ci95": [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]}


def paired(baseline, other, metric, looks=1):
    """Mean paired difference other - baseline over the seeds both have ({seed: value}), with
    a two-sided 95% Student-t interval; None with fewer than 2 common seeds.

    `looks`: how many times the comparison's results were looked at before its seeds were
    final, this one included. A table extended after a look (5 seeds, then 10) gets two
    chances to clear 0; with `looks` > 1 the entry also holds `interval`, the interval at
    confidence 1 - 0.05 / looks (Bonferroni over the looks), which the verdict then reads.
    """
    import numpy as np
    from scipy import stats

    seeds = sorted(set(baseline) & set(other))
    diffs = np.array([other[s] - baseline[s] for s in seeds])
    if len(diffs) < 2:
        return None

    def interval(confidence):
        half = (stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1)
                / np.sqrt(len(diffs)))
        return [float(diffs.mean() - half), float(diffs.mean() + half)]

    out = {"metric": metric, "seeds": seeds, "mean": float(diffs.mean()),
           "ci95": interval(0.95), "per_seed": diffs.round(4).tolist()}
    if looks > 1:
        confidence = 1 - 0.05 / looks
        out.update(looks=int(looks), confidence=confidence, interval=interval(confidence))
    return out


def verdict_interval(difference):
    """The interval a paired difference's verdict reads: the looks-adjusted one where the
    comparison was extended after a look, else the 95% one."""
    return difference.get("interval", difference["ci95"])


def machine():
    """What the figures were measured on: CPU, cores, load, library versions."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_start": _LOAD_AT_START}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    for package in ("numpy", "scipy", "tensorflow", "keras", "faiss-cpu", "scikit-learn",
                    "torch", "pytorch-metric-learning", "onnxruntime", "onnx", "tf2onnx",
                    "pillow"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss():
    """Resets the kernel's peak-RSS counter of this process (Linux >= 4.0); False if it can't.

    Writing 5 to /proc/self/clear_refs resets VmHWM, so `current_peak_rss_mib` then measures one
    phase only. ru_maxrss is not reset.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib():
    """Resident memory of this process now, MiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def current_peak_rss_mib():
    """VmHWM (peak RSS since the last `reset_peak_rss`), MiB; falls back to ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mib()


def run_measured(command, env=None, cwd=None):
    """Runs a command to completion (in `cwd`); returns (seconds, peak RSS MiB of the child,
    returncode).

    Peak RSS comes from wait4's rusage of that one child (its largest process, not a sum).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(stderr[-4000:])
    return seconds, usage.ru_maxrss / 1024.0, proc.returncode


def busy_cpu_seconds():
    """CPU seconds all processes of the machine have spent busy so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_load(busy_before, own_cpu_seconds, wall_seconds):
    """Cores' worth of CPU that other processes used while we measured (0 on a quiet machine).

    Busy CPU time of the whole machine over the interval, less our own, divided by the wall
    time; each figure in the results carries it, so a reader can tell quiet rounds from loaded.
    """
    if busy_before is None or wall_seconds <= 0:
        return float("nan")
    busy = busy_cpu_seconds() - busy_before
    return max(0.0, (busy - own_cpu_seconds) / wall_seconds)


def wait_for_quiet(threshold=0.25, max_wait=60.0, window=1.0):
    """Waits until other processes use less than `threshold` cores over a `window`-second
    sample, for at most `max_wait` seconds; returns the last sample's load.

    Call it only while this process and its workers are idle: their own CPU counts as others'.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_cpu_seconds()
        time.sleep(window)
        load = other_load(busy, 0.0, window)
        if load < threshold or time.monotonic() >= deadline:
            return load


def git_state(folder=None):
    """{"commit", "dirty"} of the repository holding `folder` (this one by default), or None.

    "dirty": a tracked file differs from the commit (untracked files are not counted), other
    than the results files in benchmarks/results/: a series of benchmarks run from one checkout
    writes them as it goes, and they are outputs, not the code that produced the figures."""
    folder = folder or HERE
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ":(top)", ":(top,exclude)benchmarks/results"],
                                cwd=folder, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def command_line(script, argv=None):
    """The command that ran a benchmark, quoted so that it can be pasted into a shell.

    Run from a shell (`argv` None), it is `python` and `sys.argv` as typed; called in-process as
    `main(argv)` (the tests), it is `python <script, relative to the repository> ARGV`.
    """
    if argv is None:
        words = list(sys.argv)
    else:
        words = [os.path.relpath(os.path.abspath(script), REPO), *argv]
    return shlex.join(["python", *map(str, words)])


def package_state():
    """Version and location of the dnc_keras that runs (found, not imported), with the git state
    of its folder: an installed copy elsewhere would otherwise pass for this checkout's code."""
    try:
        version = importlib.metadata.version("dnc_keras")
    except importlib.metadata.PackageNotFoundError:
        version = None
    spec = importlib.util.find_spec("dnc_keras")
    path = os.path.dirname(spec.origin) if spec and spec.origin else None
    return {"version": version, "path": path, "git": git_state(path) if path else None}


def threads():
    """The threads the figures ran with: the cores this process may use, the thread variables
    of the environment, and TensorFlow's / PyTorch's settings when they are loaded."""
    info = {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                 "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS"):
        if name in os.environ:
            info[name] = os.environ[name]
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        # 0 means TensorFlow's default: one thread per usable core.
        info["tensorflow_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tensorflow_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        info["torch"] = torch.get_num_threads()
    return info


def machine_load(sample_seconds=0.5):
    """Load of the machine as the results are written: the 1/5/15-minute load averages (they
    count this benchmark too) and the cores' worth of CPU that other processes use over a
    `sample_seconds` sample while this one sleeps."""
    busy = busy_cpu_seconds()
    time.sleep(sample_seconds)
    return {"loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()],
            "other_processes_cores": round(other_load(busy, 0.0, sample_seconds), 3)}


def provenance(argv=None, script=None):
    """Where a result comes from: the exact command (see `command_line`; `script` is the
    benchmark's file, needed when `argv` is given), the working folder, the package's version,
    location and git state, the git commit of the benchmarks (and whether the tree was dirty,
    tracked files only), library versions and CPU (`machine`), threads, other processes' load,
    the date the benchmark started (this module imported) and the date it wrote."""
    return {"command": command_line(script or sys.argv[0], argv), "cwd": os.getcwd(),
            "dnc_keras": package_state(), "git": git_state(),
            "started": _STARTED, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "threads": threads(), "load": machine_load()}


def add_out_argument(parser, default, tiny=True, note=""):
    """Adds `--out` (the results file) with its default named in --help.

    `default` is the file name in benchmarks/results/ (`resolve_out` turns None into it); a
    bare NAME (no folder, no .json) means benchmarks/results/NAME.json, as the commands quoted in
    the docs use it. With `tiny`, also adds `--tiny` (seconds, on small data: the test suite's
    mode), whose default file is in benchmarks/results/tiny/ instead.
    """
    parser.add_argument(
        "--out", default=None,
        help=f"results file (default: benchmarks/results/{default}{note}; a bare NAME means "
             "benchmarks/results/NAME.json" + ("; with --tiny, benchmarks/results/tiny/..."
                                               if tiny else "") + ")")
    if tiny:
        parser.add_argument("--tiny", action="store_true",
                            help="small data, few steps: seconds to a minute, to check that "
                                 "the script runs (the test suite's mode); its figures mean "
                                 "nothing")


def default_name(base, args, parser, names):
    """`base`.json, with "_<name>-<value>" added for each argument of `names` (dests) whose value
    differs from its default in `parser`: a run of another grid, size or set of candidates then
    writes a file of its own instead of replacing the published one."""
    parts = [base]
    for name in names:
        value = getattr(args, name)
        if value != parser.get_default(name):
            words = value if isinstance(value, (list, tuple)) else [value]
            text = re.sub(r"[^A-Za-z0-9_.+]+", "-", " ".join(map(str, words))).strip("-")
            parts.append(f"{name}-{text}")
    return "_".join(parts) + ".json"


def resolve_out(out, default, tiny=False):
    """The results path of `--out`: `out` as given, a bare NAME as benchmarks/results/NAME.json,
    None as `default` in benchmarks/results/ (benchmarks/results/tiny/ when `tiny`)."""
    if out is None:
        return os.path.join(TINY_DIR if tiny else RESULTS_DIR, default)
    if os.sep not in out and not out.endswith(".json"):
        return os.path.join(RESULTS_DIR, f"{out}.json")
    return out


def tiny_training_set(classes=24, per_class=8, size=28, seed=1):
    """(images [classes x per_class, size, size, 1] float32 in [0, 1), int32 labels): random
    images in place of the glyphs training set for `--tiny` runs, where rendering the glyphs
    (about 10 s) would take longer than the rest; enough classes for 20 x 4 batches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.random((classes * per_class, size, size, 1), dtype=np.float32)
    return images, np.repeat(np.arange(classes), per_class).astype(np.int32)


def write_results(results, out, argv=None, script=None, name=None):
    """Writes `results` as JSON to `out` with a top-level "provenance" (see `provenance`), and
    returns the path.

    Atomically (a temporary file in the same folder, then os.replace), so an interrupted run
    never leaves half a file over an earlier one. With `name`, also writes the keys that results
    of the benchmarks built on this module carried before the provenance ("benchmark",
    "command", "date", "machine"), taken from it, for the readers of those files.
    """
    record = provenance(argv, script)
    payload = {"provenance": record}
    if name is not None:
        payload.update(benchmark=name, command=record["command"], date=record["date"],
                       machine=record["machine"])
    payload.update(results)
    write_atomic(out, json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {out}")
    return out


def write_atomic(path, text):
    """Writes `text` to `path` atomically (`dnc_keras.files`), creating its folder."""
    from dnc_keras import files

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_text(path, text)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def table(rows, headers):
    """A Markdown table from rows of values (floats printed with 3 significant digits)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
