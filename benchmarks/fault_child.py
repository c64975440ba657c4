"""`dnc-keras ARGS` with one fault injected at a chosen point: the child process of
bench_faults.py.

    python benchmarks/fault_child.py --fault batch:7 -- train --dataset digits ...

Faults (each happens once, in this process only):
- `batch:N`          SIGKILL itself at the end of the N-th training batch of this process.
- `action:I:SECONDS` SIGKILL itself SECONDS after the I-th divide-and-conquer action of this
                     process started (a re-clustering's embedding, k-means or matching).
- `save:I:SECONDS`   SIGKILL itself SECONDS after the I-th checkpoint save started.
- `save-index:I`     SIGKILL itself in the I-th save, after the checkpoint's data files are
                     written and before its index (`checkpoint`) names it.
- `replace:NAME`     SIGKILL itself inside the atomic write of NAME, just before the rename.
- `nan:N`            Sets the first weight to NaN before the N-th training batch.
- `full-disk:NAME`   The write of NAME fails as on a full disk (ENOSPC).
- `none`             Runs unchanged and prints the durations of every action and save as
                     `TIMING {...}` lines (for choosing SECONDS).

Markers on stdout tell the parent where the kill landed: `START action I`, `END action I`,
`START save I`, `END save I`.
"""

import argparse
import errno
import json
import os
import signal
import sys
import threading
import time


def _kill():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after(seconds):
    timer = threading.Timer(seconds, _kill)
    timer.daemon = True
    timer.start()


def _timing(kind, index, seconds):
    print("TIMING " + json.dumps({"kind": kind, "index": index, "seconds": seconds}),
          flush=True)


def _count_calls(owner, name, before=None, after=None, around=None, calls=None):
    """Wraps owner.name; before/after(i, args) and around(i, call) get the 1-based count of
    calls (shared between wrappers given the same `calls` dict)."""
    original = getattr(owner, name)
    calls = {"n": 0} if calls is None else calls

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        i = calls["n"]
        if before:
            before(i, args)
        if around:
            result = around(i, lambda: original(*args, **kwargs))
        else:
            result = original(*args, **kwargs)
        if after:
            after(i, args)
        return result

    setattr(owner, name, wrapper)


def _timed(kind, target=None, kill_after=None):
    """An `around` that prints START/END markers and timings, and arms the kill on `target`."""
    def around(i, call):
        print(f"START {kind} {i}", flush=True)
        if i == target and kill_after is not None:
            _kill_after(kill_after)
        start = time.perf_counter()
        result = call()
        _timing(kind, i, time.perf_counter() - start)
        print(f"END {kind} {i}", flush=True)
        return result
    return around


def install(fault):
    import keras
    import tensorflow as tf

    from dnc_keras import callbacks, files
    from dnc_keras.training import checkpoints

    kind, _, rest = fault.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "batch":
        n = int(parts[0])
        _count_calls(keras.callbacks.CallbackList, "on_train_batch_end",
                     after=lambda i, args: _kill() if i == n else None)
    elif kind == "nan":
        n = int(parts[0])

        def poison(i, args):
            if i == n:
                variable = args[0].model.encoder.trainable_variables[0]
                variable.assign(tf.fill(variable.shape, float("nan")))
        _count_calls(keras.callbacks.CallbackList, "on_train_batch_begin", before=poison)
    if kind in ("action", "none"):
        target, delay = (int(parts[0]), float(parts[1])) if kind == "action" else (None, None)
        around, shared = _timed("action", target, delay), {"n": 0}
        for method in ("_kmeans", "_divide"):  # the actions that embed and cluster
            _count_calls(callbacks.DnCScheduleCallback, method, around=around, calls=shared)
    if kind in ("save", "none"):
        target, delay = (int(parts[0]), float(parts[1])) if kind == "save" else (None, None)
        _count_calls(checkpoints.TrainingState, "save", around=_timed("save", target, delay))
    elif kind == "save-index":
        from tensorflow.python.checkpoint import checkpoint_management

        n = int(parts[0])
        _count_calls(checkpoint_management, "update_checkpoint_state_internal",
                     before=lambda i, args: _kill() if i == n else None)
    elif kind == "replace":
        name = parts[0]
        original = os.replace

        def replace(source, target, *args, **kwargs):
            if os.path.basename(os.fspath(target)) == name:
                _kill()
            return original(source, target, *args, **kwargs)
        os.replace = replace
    elif kind == "full-disk":
        name = parts[0]
        original = files.atomic_path

        class _FullDisk:
            def __init__(self, path):
                self.inner = original(path)
                self.full = os.path.basename(os.fspath(path)) == name

            def __enter__(self):
                return self.inner.__enter__()

            def __exit__(self, *exc):
                if self.full and exc[0] is None:
                    error = OSError(errno.ENOSPC, "No space left on device")
                    return self.inner.__exit__(OSError, error, None)
                return self.inner.__exit__(*exc)
        files.atomic_path = _FullDisk
        # Modules that imported the name before the patch.
        from dnc_keras.training import job
        job.atomic_path = _FullDisk
    elif kind not in ("action", "none", "batch", "nan", "save"):
        raise SystemExit(f"unknown fault {fault!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fault", required=True, help="see the module docstring")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the dnc-keras arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    install(args.fault)
    from dnc_keras_cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main())
