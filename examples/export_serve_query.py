"""Tutorial 3: export a trained run, serve it, and query it over TF Serving's protocols and with
ONNX Runtime on a machine without TensorFlow.

    python examples/export_serve_query.py OUT                    # trains a small digits run first
    python examples/export_serve_query.py OUT --run runs/mine --images a.png b.jpg
    python examples/export_serve_query.py OUT --rest http://localhost:8501 --grpc localhost:8500

Step by step:
1. A run folder (`dnc-keras train`), here a small one on scikit-learn's digits unless --run
   names yours.
2. `export_run` writes OUT/saved_models/NAME/: the SavedModel in TF Serving's layout
   (NAME/1/), NAME.onnx and manifest.json, after checking that both compute the run's own
   embeddings and retrieval metrics.
3. A server. In production that is TF Serving:
       MODEL_NAME=NAME docker compose -f serving/docker-compose.yml up
   (gRPC on 8500, REST on 8501; pass --rest and --grpc). Without them the tutorial starts the
   TF Serving protocol peers the tests use (tests/export/tfs_peers.py: the same gRPC service and
   REST routes, serving the SavedModel the way TF Serving loads it) in a process of their own.
4. Queries: image files, through serving/rest_client.py (JSON, files as base64) and
   serving/grpc_client.py (PredictionService).
5. The edge: serving/edge_infer.py with ONNX Runtime, in a child process in which
   `import tensorflow` fails, as on a device with onnxruntime, numpy and Pillow only.

Prints one JSON line: for each route, the largest difference of its embeddings from the run's
own (the Keras model on the run's preprocessing); OUT/embeddings.json holds them all.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(REPO, "serving")
PEERS = os.path.join(REPO, "tests", "export", "tfs_peers.py")
NAME = "digits"

# The edge child: TensorFlow made unimportable before anything runs, then edge_infer.py as its
# command line would run it.
EDGE_CHILD = """
import json, runpy, sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
try:
    import tensorflow
    raise SystemExit("tensorflow is importable in the edge child")
except ImportError:
    pass
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def train_small_run(folder, epochs=2):
    """A small digits run (digits 0-4 train, 5-9 are the unseen test classes); its folder."""
    from dnc_keras.training import job
    from dnc_keras.training.config import TrainConfig

    config = TrainConfig.resolve(dataset="digits", epochs=epochs, learners=2, embedding_dim=16,
                                 classes_per_batch=4, samples_per_class=4, steps_per_epoch=4,
                                 nmi=False, plots=False, out=folder)
    job.run(config, verbose=0, overwrite=True)
    return folder


def write_queries(folder, count=6):
    """PNG files of unseen digits (the test split's own pixels); their paths."""
    from PIL import Image

    from dnc_keras import datasets

    data = datasets.load("digits")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = (data.x_test[i * 37, :, :, 0] * 255).round().astype("uint8")
        paths.append(os.path.join(folder, f"digit{data.y_test[i * 37]}_{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


@contextlib.contextmanager
def protocol_peers(export_root, name):
    """TF Serving's gRPC and REST protocols on free localhost ports, in their own process;
    yields {"grpc": target, "rest": url}. Stops when its stdin closes."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen([sys.executable, PEERS, export_root, name], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the serving peers did not start: {process.stderr.read()[-2000:]}")
        yield json.loads(line)
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def query_servers(rest_url, grpc_target, name, manifest, paths):
    """Embeddings of `paths` from TF Serving's REST and gRPC APIs (the serving/ clients)."""
    sys.path.insert(0, SERVING)
    import grpc_client
    import image_input
    import rest_client

    contract = image_input.load_contract(manifest)  # decoding and bounds, checked client-side
    rest = rest_client.RestEmbeddingClient(rest_url, name, contract=contract)
    with grpc_client.GrpcEmbeddingClient(grpc_target, name, contract=contract) as grpc:
        return {"rest": rest.embed_files(paths).tolist(),
                "grpc": grpc.embed_files(paths).tolist()}


def query_edge(onnx_path, paths):
    """Embeddings of `paths` from serving/edge_infer.py in a child without TensorFlow."""
    argv = [os.path.join(SERVING, "edge_infer.py"), onnx_path, *paths]
    out = subprocess.run([sys.executable, "-c", EDGE_CHILD.format(argv=argv)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"edge_infer.py failed: {out.stderr[-2000:]}")
    return [json.loads(line)["embedding"] for line in out.stdout.splitlines()]


def main(out, run=None, rest=None, grpc=None, epochs=2, images=None):
    """Runs the tutorial's steps; returns its report (see the module docstring)."""
    import numpy as np

    from dnc_keras.export import export_run, load_run
    from dnc_keras.preprocessing import load_files

    # 1-2. The run and its export.
    run = run or train_small_run(os.path.join(out, "run"), epochs)
    export_root = os.path.join(out, "saved_models")
    manifest = export_run(run, NAME, out=export_root, overwrite=True)
    folder = os.path.join(export_root, NAME)
    paths = images or write_queries(os.path.join(out, "queries"))
    # 3-4. The servers, and the queries over their protocols.
    if rest and grpc:
        served = query_servers(rest, grpc, NAME, os.path.join(folder, "manifest.json"), paths)
    else:
        with protocol_peers(export_root, NAME) as peers:
            served = query_servers(peers["rest"], peers["grpc"], NAME,
                                   os.path.join(folder, "manifest.json"), paths)
    # 5. The edge, without TensorFlow.
    served["onnxruntime"] = query_edge(os.path.join(folder, manifest["onnx"]["path"]), paths)
    # The reference: the run's own embeddings of the same files.
    trained = load_run(run)
    own = trained.model.embed(load_files(paths, trained.preprocessing))
    embeddings = {"files": paths, "run": own.tolist(), **served}
    with open(os.path.join(out, "embeddings.json"), "w") as f:
        json.dump(embeddings, f)
    return {"export": folder, "version": manifest["version"], "queries": len(paths),
            "max_abs_diff_vs_run": {route: float(np.abs(np.asarray(values) - own).max())
                                    for route, values in served.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the run, the export and the queries")
    parser.add_argument("--run", default=None, help="a run folder to export instead of "
                        "training the small digits run")
    parser.add_argument("--images", nargs="+", default=None,
                        help="query image files (default: a few unseen digits)")
    parser.add_argument("--rest", default=None, help="TF Serving's REST URL (with --grpc)")
    parser.add_argument("--grpc", default=None, help="TF Serving's gRPC host:port")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if bool(args.rest) != bool(args.grpc):
        parser.error("give both --rest and --grpc (a running TF Serving), or neither")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(main(args.out, args.run, args.rest, args.grpc, args.epochs, args.images)))
