"""Bad input at serving time gets a clear error naming the problem, at every layer: inside the
served graph (sent raw to the TF Serving peer, which like TF Serving checks only dtypes), in
the gRPC and REST clients before sending, and in the edge script."""

import os
import re

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dnc_keras_cli.options import BOUNDS_DEFAULTS

BOUND = BOUNDS_DEFAULTS["max_side"]
MAX_BATCH = BOUNDS_DEFAULTS["max_batch"]
MAX_PIXELS = BOUNDS_DEFAULTS["max_pixels"]
BAD_IMAGES = {
    # name: (array, message the graph and the clients give)
    "wrong dtype": (np.zeros((2, 8, 8, 1), np.float32), "uint8"),
    "wrong rank": (np.zeros((8, 8, 1), np.uint8), r"uint8 \[batch, height, width, 1\]"),
    "rank 5": (np.zeros((2, 8, 8, 1, 1), np.uint8), r"uint8 \[batch, height, width, 1\]"),
    "three channels": (np.zeros((2, 8, 8, 3), np.uint8), r"uint8 \[batch, height, width, 1\]"),
    "empty batch": (np.zeros((0, 8, 8, 1), np.uint8), "empty batch"),
    "zero width": (np.zeros((1, 8, 0, 1), np.uint8), "height and width"),
    "too large": (np.zeros((1, BOUND + 1, 8, 1), np.uint8), f"serving bound of {BOUND}"),
    "too many": (np.zeros((MAX_BATCH + 1, 8, 8, 1), np.uint8), f"bound of {MAX_BATCH} images"),
    "too many pixels": (np.zeros((4, 4000, 3000, 1), np.uint8), f"bound of {MAX_PIXELS} pixels"),
}


def bad_files(encode):
    png = encode(np.full((8, 8, 1), 200, np.uint8))
    jpeg = encode(np.full((16, 16, 3), 90, np.uint8), "JPEG")
    return {
        "not an image": (b"hello world, not an image", "not a JPEG or PNG"),
        "truncated png": (png[:len(png) // 2], "(Invalid PNG|corrupt)"),
        "png header only": (png[:20], "(truncated|corrupt)"),
        "truncated jpeg": (jpeg[:len(jpeg) // 2], "(Invalid JPEG|corrupt)"),
        "gif": (_gif(), "(not a JPEG or PNG|JPEG or PNG only)"),
        "png too large": (encode(np.zeros((2, BOUND + 10, 1), np.uint8)),
                          rf"sides in \[1, {BOUND}\]"),
    }


def _gif():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="GIF")
    return buffer.getvalue()


def raw_predict(target, signature, key, value):
    """A PredictRequest with no client-side checks: what a careless client would send."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=60)


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_graph_rejects_bad_images(grpc_target, case):
    array, message = BAD_IMAGES[case]
    with pytest.raises(grpc.RpcError) as error:
        raw_predict(grpc_target, "serving_default", "images", array)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    pattern = "expect uint8" if case == "wrong dtype" else message
    assert re.search(pattern, error.value.details()), error.value.details()


def test_graph_rejects_bad_files(grpc_target, encode):
    for case, (data, message) in bad_files(encode).items():
        with pytest.raises(grpc.RpcError) as error:
            raw_predict(grpc_target, "serving_bytes", "image_bytes", [data])
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert re.search(message, error.value.details()), (case, error.value.details())
    with pytest.raises(grpc.RpcError, match="empty batch"):
        raw_predict(grpc_target, "serving_bytes", "image_bytes", np.array([], object))
    with pytest.raises(grpc.RpcError, match="string vector"):
        raw_predict(grpc_target, "serving_bytes", "image_bytes",
                    np.array([[b"a", b"b"]], object))


def test_server_still_serves_after_bad_requests(grpc_target, digits, keras_model):
    response = raw_predict(grpc_target, "serving_default", "images", digits[0][:2])
    served = tf.make_ndarray(response.outputs["embeddings"])
    reference = keras_model.embed(digits[0][:2].astype(np.float32) / 255.0)
    assert served.shape == (2, 16) and np.abs(served - reference).max() < 1e-5


@pytest.mark.parametrize("client_kind", ["grpc", "rest", "edge"])
def test_clients_reject_bad_input_before_sending(client_kind, serving_modules, grpc_target,
                                                 rest_url, export_dir, servable, encode):
    InputError = serving_modules["image_input"].InputError
    if client_kind == "grpc":
        client = serving_modules["grpc_client"].GrpcEmbeddingClient(grpc_target, "digits")
    elif client_kind == "rest":
        client = serving_modules["rest_client"].RestEmbeddingClient(rest_url, "digits")
    else:
        client = serving_modules["edge_infer"].EdgeModel(os.path.join(export_dir, "digits.onnx"))
    assert (client.contract.max_side if client_kind != "edge" else client.max_side) == BOUND
    before = servable.requests
    for case, (array, message) in BAD_IMAGES.items():
        with pytest.raises(InputError, match=message):
            client.embed(array)
    if client_kind != "edge":
        for case, (data, message) in bad_files(encode).items():
            with pytest.raises(InputError, match=message):
                client.embed_bytes([data])
        with pytest.raises(InputError, match="empty batch"):
            client.embed_bytes([])
    assert servable.requests == before  # nothing reached the server


def test_edge_script_reports_unreadable_file(serving_modules, export_dir, tmp_path, capsys,
                                             encode):
    png = encode(np.full((40, 30, 1), 90, np.uint8))
    for name, data, message in (("stub.png", b"\x89PNG\r\n\x1a\nbroken", "truncated image file"),
                                ("half.png", png[:len(png) // 2], "corrupt or unreadable image")):
        bad = tmp_path / name
        bad.write_bytes(data)
        code = serving_modules["edge_infer"].main([os.path.join(export_dir, "digits.onnx"),
                                                   str(bad)])
        assert code == 2
        assert f"{name}: {message}" in capsys.readouterr().err
