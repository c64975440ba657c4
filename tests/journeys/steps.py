"""The steps of the journeys, each run the way a user runs it: every step is a fresh process (the `dnc-keras` command,
the serving scripts, the TF Serving protocol peers), reading only what earlier steps wrote.

A class registered only by the process that trained a model, a preprocessing step that exists
only in memory, a path that only the training process knew: each breaks a journey here.
"""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVING = os.path.join(REPO, "serving")
PEERS = os.path.join(REPO, "tests", "export", "tfs_peers.py")
# Served embeddings against the run's own evaluation embeddings of the same files.
TOLERANCE = 1e-4
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1"}


def _command():
    script = os.path.join(os.path.dirname(sys.executable), "dnc-keras")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dnc_keras.cli"]


def run(argv, cwd, expect=0, timeout=600):
    """One step in a fresh process; returns its stdout, failing with its stderr."""
    result = subprocess.run(argv, cwd=cwd, env=_ENV, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == expect, (
        f"step {' '.join(map(str, argv))} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout


def dnc(*args, cwd, expect=0):
    """`dnc-keras ARGS` in a fresh process."""
    return run(_command() + [str(a) for a in args], cwd, expect)


def script(path, *args, cwd, expect=0):
    """`python serving/SCRIPT ARGS` in a fresh process."""
    return run([sys.executable, path] + [str(a) for a in args], cwd, expect)


def embeddings(stdout):
    """{image: embedding} of the JSON lines the clients, the edge script and `embed` print."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {row["image"]: np.asarray(row["embedding"], np.float32) for row in rows}


def worst(found, reference):
    assert set(found) == set(reference), (sorted(found)[:3], sorted(reference)[:3])
    return max(float(np.abs(found[k] - reference[k]).max()) for k in reference)


@contextlib.contextmanager
def tf_serving_peers(export_root, name, cwd):
    """The TF Serving protocol peers in their own process; yields {"grpc", "rest"}."""
    process = subprocess.Popen([sys.executable, PEERS, str(export_root), name], cwd=cwd,
                               env=_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line, f"the TF Serving peers did not start: {process.stderr.read()[-3000:]}"
        yield json.loads(line)
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def write_files(folder, images_by_class, fmt="PNG"):
    """folder/<class>/<i>.<fmt> for uint8 arrays; returns the paths in order."""
    from PIL import Image

    paths = []
    for label, images in images_by_class.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            path = folder / label / f"{i}.{fmt.lower()}"
            array = image[..., 0] if image.shape[-1] == 1 else image
            Image.fromarray(array).save(path, fmt)
            paths.append(str(path))
    return paths


def check_served_chain(tmp_path, run_dir, name, files, gallery=None, query=None):
    """export -> the run's own embeddings of `files` (`embed` on the run folder) -> ... -> each
    served embedding within TOLERANCE of the run's own, every step a fresh process.

    Each step costs ~10 s of TensorFlow start-up, so a journey runs the steps its input can
    break, each once (the suite keeps within its time):
    - without a gallery (a journey per input kind): the decoders - TensorFlow's
      (`serving_bytes`, run by `embed --runtime savedmodel`), the graph decoder before ONNX
      Runtime (`embed --runtime onnx`) and serving/image_input.py (edge_infer.py; the
      clients' --pixels decode with it too);
    - with a gallery (the main job's journey): the deployment - the TF Serving peers with the
      gRPC and REST clients (bytes to `serving_bytes`; REST's --pixels to `serving_default`),
      build-index -> search. (The int8 variant's quality is measured at export, in
      tests/export: the edge script reads it as it reads the float32 file.)
    validate-export has its own tests (tests/export/test_validate.py, test_export_cli.py):
    it reads only the export's files.

    Returns (the export manifest, {file: the run's own embedding}).
    """
    full = gallery is not None
    exports = tmp_path / "saved_models"
    manifest = json.loads(dnc("export", run_dir, "--name", name, "--out", exports, "--json",
                              cwd=tmp_path))
    assert manifest["parity"]["passed"], manifest["parity"]
    export_dir = exports / name
    # What a user deploys is the folder on disk: the printed manifest is the one written there.
    assert json.loads((export_dir / "manifest.json").read_text()) == manifest

    reference = embeddings(dnc("embed", run_dir, *files, cwd=tmp_path))
    edge = os.path.join(SERVING, "edge_infer.py")
    assert worst(embeddings(script(edge, export_dir / f"{name}.onnx", *files, cwd=tmp_path)),
                 reference) <= TOLERANCE
    if not full:
        for runtime in ("savedmodel", "onnx"):
            served = embeddings(dnc("embed", export_dir, "--runtime", runtime, *files,
                                    cwd=tmp_path))
            assert worst(served, reference) <= TOLERANCE, runtime
        return manifest, reference
    with tf_serving_peers(exports, name, tmp_path) as peers:
        assert peers["warmup"] == 2
        # Files as bytes over both protocols; decoded pixels once, over REST (the gRPC
        # client's --pixels is the same decoder: tests/export/test_serving_clients.py).
        grpc = os.path.join(SERVING, "grpc_client.py")
        rest = os.path.join(SERVING, "rest_client.py")
        for argv in ([grpc, "--server", peers["grpc"]], [rest, "--url", peers["rest"]],
                     [rest, "--url", peers["rest"], "--pixels", "--manifest",
                      export_dir / "manifest.json"]):
            served = embeddings(script(*argv, "--model", name, *files, cwd=tmp_path))
            assert worst(served, reference) <= TOLERANCE, argv
    index = tmp_path / "index"
    dnc("build-index", gallery, "--model", export_dir, "--out", index, cwd=tmp_path)
    found = json.loads(dnc("search", index, query, "-k", "3", "--json", cwd=tmp_path))
    assert found["matches"][0]["path"] == str(query)  # a gallery image finds itself first
    assert found["matches"][0]["distance"] < 1e-3
    return manifest, reference
