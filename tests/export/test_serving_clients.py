"""serving/grpc_client.py and serving/rest_client.py against real protocol peers: a gRPC
PredictionService and TF Serving's REST API, both serving the exported SavedModel
(tests/export/tfs_peers.py)."""

import base64
import json
import os
import urllib.request

import numpy as np
import pytest


@pytest.fixture(scope="module")
def grpc_client(serving_modules, grpc_target):
    client = serving_modules["grpc_client"].GrpcEmbeddingClient(grpc_target, "digits")
    yield client
    client.close()


@pytest.fixture(scope="module")
def rest_client(serving_modules, rest_url):
    return serving_modules["rest_client"].RestEmbeddingClient(rest_url, "digits")


@pytest.fixture(scope="module")
def expected(keras_model, digits):
    images = digits[0][:9]
    return images, keras_model.embed(images.astype(np.float32) / 255.0)


def gallery_files(gallery, count=4):
    folder = os.path.join(gallery, "class1")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))[:count]


def test_grpc_pixels_match_keras(grpc_client, expected):
    images, reference = expected
    assert grpc_client.channels == 1  # read from GetModelMetadata's signature_def
    out = grpc_client.embed(images)
    assert out.shape == (9, 16) and np.abs(out - reference).max() < 1e-5


def test_grpc_files_as_bytes_match_pixels(grpc_client, gallery):
    files = gallery_files(gallery)
    from_bytes = grpc_client.embed_files(files)
    from_pixels = grpc_client.embed_files(files, pixels=True)
    assert np.abs(from_bytes - from_pixels).max() < 1e-6


def test_grpc_metadata_lists_both_signatures(grpc_client):
    signatures = grpc_client.signature_defs()
    assert {"serving_default", "serving_bytes"} <= set(signatures)
    assert list(signatures["serving_bytes"].inputs) == ["image_bytes"]


def test_grpc_unknown_model_is_not_found(serving_modules, grpc_target):
    module = serving_modules["grpc_client"]
    with pytest.raises(module.ServingError, match="NOT_FOUND: Servable not found"):
        module.GrpcEmbeddingClient(grpc_target, "nope")


def test_rest_pixels_match_keras(rest_client, expected):
    images, reference = expected
    assert rest_client.channels == 1  # read from /metadata
    out = rest_client.embed(images)
    assert np.abs(out - reference).max() < 1e-5


def test_rest_b64_files_match_grpc(rest_client, grpc_client, gallery):
    files = gallery_files(gallery)
    assert np.abs(rest_client.embed_files(files) - grpc_client.embed_files(files)).max() < 1e-6


def test_rest_wire_format(rest_url, gallery, expected):
    """The documented TF Serving JSON, by hand: row format with b64, columnar with pixels."""
    with open(gallery_files(gallery, 1)[0], "rb") as f:
        b64 = base64.b64encode(f.read()).decode()

    def post(body):
        request = urllib.request.Request(f"{rest_url}/v1/models/digits/versions/1:predict",
                                         data=json.dumps(body).encode())
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    rows = post({"signature_name": "serving_bytes", "instances": [{"b64": b64}]})
    assert np.asarray(rows["predictions"]).shape == (1, 16)
    images, reference = expected
    columns = post({"inputs": {"images": images[:2].tolist()}})
    assert np.abs(np.asarray(columns["outputs"]) - reference[:2]).max() < 1e-5
    with urllib.request.urlopen(f"{rest_url}/v1/models/digits") as response:
        status = json.loads(response.read())
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_rest_server_error_is_reported(serving_modules, rest_url):
    module = serving_modules["rest_client"]
    client = module.RestEmbeddingClient(rest_url, "digits",
                                        serving_modules["image_input"].Contract(channels=1))
    with pytest.raises(module.ServingError, match="HTTP 400: .*not of expected type: uint8"):
        client.predict("serving_default", [[[[0.5]]]])


def _run_embeddings(keras_model, files):
    """The run's own embeddings of files: its record's decode and transform, then the model."""
    from dnc_keras.preprocessing import load_files

    return keras_model.embed(load_files(files, keras_model.preprocessing))


def test_grpc_cli(serving_modules, grpc_target, gallery, keras_model, capsys):
    files = gallery_files(gallery, 3)
    assert serving_modules["grpc_client"].main(
        ["--server", grpc_target, "--model", "digits", *files]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == files
    printed = np.asarray([line["embedding"] for line in lines])
    assert np.abs(printed - _run_embeddings(keras_model, files)).max() < 1e-5


def test_rest_cli_with_manifest(serving_modules, rest_url, export_dir, gallery, keras_model,
                                capsys):
    files = gallery_files(gallery, 3)
    assert serving_modules["rest_client"].main(
        ["--url", rest_url, "--model", "digits", "--pixels",
         "--manifest", os.path.join(export_dir, "manifest.json"), *files]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == files
    printed = np.asarray([line["embedding"] for line in lines])
    assert np.abs(printed - _run_embeddings(keras_model, files)).max() < 1e-5
