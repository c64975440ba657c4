"""Launches `dist_worker.py` processes for the distributed tests, bounded in time, cleaned up.

Every process is started here and killed here (SIGKILL by its own pid) if it is still running
when a test ends. `reference()` trains the one-device and two-replica runs once per process;
the files that use it share one xdist group (tests/conftest.py), so once per session.
test_mirrored checks them and the other tests compare their results with them.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")
TIMEOUT = 150  # seconds for one training process on 2 busy cores (about 15 s when idle)
REFERENCE_RUNS = "one:custom,mirrored:custom,one:fit,mirrored:fit,mirrored-local:custom"
_reference = {}


def free_ports(count):
    """Distinct free localhost ports (held open together so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Processes:
    """Worker processes of one test; `kill_all` (also on exit) SIGKILLs those still alive."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.procs = []

    def start(self, name, args, tf_config_json=None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        env.pop("TF_CONFIG", None)
        if tf_config_json:
            env["TF_CONFIG"] = tf_config_json
        log = open(os.path.join(self.folder, f"{name}.log"), "w")
        proc = subprocess.Popen([sys.executable, WORKER, *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        log.close()
        proc.log_path = os.path.join(self.folder, f"{name}.log")
        self.procs.append(proc)
        return proc

    def wait_for(self, proc, text, timeout=TIMEOUT):
        """Waits until `text` is in the process's log; fails if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(proc):
                return
            if proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.returncode}) before printing "
                                     f"{text!r}:\n{self.tail(proc)}")
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} after {timeout}s:\n{self.tail(proc)}")

    def wait_all(self, procs, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"timed out after {timeout}s:\n{self.tail(proc)}") from None
            if proc.returncode != 0:
                raise AssertionError(f"exit code {proc.returncode}:\n{self.tail(proc)}")

    def kill(self, proc):
        """kill -9 of one process we started."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)

    @staticmethod
    def log(proc):
        with open(proc.log_path) as f:
            return f.read()

    def tail(self, proc, lines=40):
        return "\n".join(self.log(proc).splitlines()[-lines:])


@contextlib.contextmanager
def processes(folder):
    group = Processes(folder)
    try:
        yield group
    finally:
        group.kill_all()


def run_cluster(folder, extra_args, workers=2, tag="run", pause=None,
                runs="multi-worker:custom"):
    """Starts a localhost cluster of `workers` processes; returns them (still running).

    `pause` = (worker index, steps): that worker stops after that many steps and prints PAUSED.
    """
    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        args = ["--runs", runs, "--out",
                os.path.join(folder.folder, f"{tag}-worker{index}.npz"), *extra_args]
        if pause and pause[0] == index:
            args += ["--pause-at", str(pause[1])]
        procs.append(folder.start(f"{tag}-worker{index}", args, tf_config(ports, index)))
    return procs


def load(path, run):
    with np.load(path) as data:
        return {key.split("/", 1)[1]: data[key] for key in data.files
                if key.startswith(run + "/")}


def reference():
    """{run: results} of the one-device and two-replica reference runs, trained once."""
    if not _reference:
        folder = tempfile.mkdtemp(prefix="dnc-dist-reference-")
        out = os.path.join(folder, "reference.npz")
        with processes(folder) as group:
            proc = group.start("reference", ["--devices", "2", "--runs", REFERENCE_RUNS,
                                             "--out", out])
            group.wait_all([proc], timeout=2 * TIMEOUT)
        for run in REFERENCE_RUNS.split(","):
            _reference[run] = load(out, run)
    return _reference
