"""Shared, session-scoped fixtures of the export tests: one tiny trained run (scikit-learn's
digits, one epoch), one export of it, and the TF Serving protocol peers on top of it."""

import io
import os

import numpy as np
import needs
import pytest
from PIL import Image

for _name in ("tf2onnx", "onnxruntime", "tensorflow_serving"):
    needs.module(_name)

SERVING_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "serving")
MODEL_NAME = "digits"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    from dnc_keras.training import job, plots
    from dnc_keras.training.config import TrainConfig

    out = tmp_path_factory.mktemp("export_run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        # The run's 2-D plot of the test embeddings (t-SNE) takes longer than the training
        # and the export together, and nothing here looks at it.
        patch.setattr(plots, "embedding_2d", lambda *args, **kwargs: None)
        job.run(TrainConfig(dataset="digits", epochs=1, learners=2, embedding_dim=16,
                            classes_per_batch=4, samples_per_class=4, out=str(out)), verbose=0)
    return str(out)


@pytest.fixture(scope="session")
def export_root(trained_run, tmp_path_factory):
    """saved_models-like root holding digits/1 (SavedModel), digits.onnx, digits.int8.onnx."""
    from dnc_keras.export import export_run

    root = tmp_path_factory.mktemp("saved_models")
    export_run(trained_run, MODEL_NAME, out=str(root), quantize=("int8",))
    return str(root)


@pytest.fixture(scope="session")
def export_dir(export_root):
    return os.path.join(export_root, MODEL_NAME)


@pytest.fixture(scope="session")
def manifest(export_dir):
    from dnc_keras.export import read_manifest

    return read_manifest(export_dir)


@pytest.fixture(scope="session")
def keras_model(trained_run):
    from dnc_keras.export import load_run

    return load_run(trained_run).model


@pytest.fixture(scope="session")
def digits():
    """(uint8 images [N, 8, 8, 1], labels) of the digits test classes: real images."""
    from dnc_keras import datasets

    data = datasets.load("digits")
    images = np.round(data.x_test * 255).astype(np.uint8)
    return images, np.asarray(data.y_test)


@pytest.fixture(scope="session")
def servable(export_root):
    import tfs_peers

    return tfs_peers.Servable(export_root, MODEL_NAME)


@pytest.fixture(scope="session")
def grpc_target(servable):
    import tfs_peers

    server, target = tfs_peers.start_grpc(servable)
    yield target
    server.stop(grace=None)


@pytest.fixture(scope="session")
def rest_url(servable):
    import tfs_peers

    server, url = tfs_peers.start_rest(servable)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def serving_modules():
    """serving/ is a folder of scripts, not a package: import them by path."""
    import sys

    path = os.path.abspath(SERVING_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    import edge_infer
    import grpc_client
    import image_input
    import rest_client

    return {"grpc_client": grpc_client, "rest_client": rest_client,
            "edge_infer": edge_infer, "image_input": image_input}


def _encode(image, fmt="PNG"):
    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def encode():
    """encode(uint8 [h, w, 1 or 3], fmt="PNG") -> the encoded file's bytes."""
    return _encode


@pytest.fixture(scope="session")
def gallery(digits, tmp_path_factory):
    """A folder of PNG files, one subfolder per digit class (40 images)."""
    images, labels = digits
    root = tmp_path_factory.mktemp("gallery")
    picked = np.concatenate([np.flatnonzero(labels == c)[:8] for c in np.unique(labels)])
    for i in picked:
        folder = root / f"class{labels[i]}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(_encode(images[i]))
    return str(root)
