"""A request beyond the bounds gets the same refusal on every path: the SavedModel's graph as
TF Serving runs it (through the protocol peer, which like TF Serving checks only dtypes),
`ExportedModel` on both runtimes (numpy checks first: ONNX has no assert op, and ONNX Runtime
alone embeds an empty batch or a 20,000 x 20,000 image) and edge_infer.py's `EdgeModel`. Files
beyond the bounds are refused from their headers alike, by the graph, `ExportedModel`, the edge
script and the clients. The expected messages are written out here, from the export's bounds."""

import os
import struct
import zlib

import grpc
import numpy as np
import pytest

from dnc_keras.export import ExportedModel
from dnc_keras.preprocessing import error_reason
from test_serving_bad_inputs import raw_predict


class _Failure:
    def __init__(self, message):
        self.message = message


def graph_message(target, signature, key, value):
    with pytest.raises(grpc.RpcError) as error:
        raw_predict(target, signature, key, value)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return error_reason(_Failure(error.value.details()))


def request_cases(bounds):
    """{case: (shape, the refusal)} for the digits export (1 channel)."""
    side, batch, pixels = bounds["max_side"], bounds["max_batch"], bounds["max_pixels"]
    square = min(side, int(pixels ** 0.5))
    many = pixels // (square * square) + 1
    assert many <= batch
    return {
        "empty batch": ((0, 8, 8, 1), "images is an empty batch; got shape [0 8 8 1]"),
        "too many images": ((batch + 1, 8, 8, 1), f"images holds more than the bound of {batch}"
                            f" images per request; got shape [{batch + 1} 8 8 1]"),
        "side too large": ((1, side + 1, 8, 1), f"images larger than the serving bound of {side}"
                           f" px per side; got shape [1 {side + 1} 8 1]"),
        "too many pixels": ((many, square, square, 1), f"request larger than the bound of "
                            f"{pixels} pixels; got shape [{many} {square} {square} 1]"),
        "wrong channels": ((1, 8, 8, 3), "images must be uint8 [batch, height, width, 1] (1 is "
                           "the channel count of the model); got shape [1 8 8 3]"),
        "zero width": ((1, 8, 0, 1), "images must have height and width >= 1; got shape "
                       "[1 8 0 1]"),
    }


@pytest.fixture(scope="module")
def models(export_dir, serving_modules):
    edge = serving_modules["edge_infer"].EdgeModel(os.path.join(export_dir, "digits.onnx"))
    return {"savedmodel": ExportedModel(export_dir, runtime="savedmodel"),
            "onnx": ExportedModel(export_dir, runtime="onnx"), "edge": edge}


def test_every_path_refuses_a_request_with_the_same_message(manifest, models, grpc_target,
                                                            serving_modules):
    InputError = serving_modules["image_input"].InputError
    for case, (shape, expected) in request_cases(manifest["bounds"]).items():
        images = np.zeros(shape, np.uint8)
        found = {"graph (TF Serving)": graph_message(grpc_target, "serving_default", "images",
                                                     images)}
        for runtime in ("savedmodel", "onnx"):
            with pytest.raises(ValueError) as error:
                models[runtime].embed(images, batch_size=max(1, len(images)))
            found[f"ExportedModel {runtime}"] = str(error.value)
        with pytest.raises(InputError) as error:
            models["edge"].embed(images)
        found["edge_infer"] = str(error.value)
        assert set(found.values()) == {expected}, (case, found)


def test_within_the_bounds_every_path_embeds(manifest, models, digits):
    images = digits[0][:3]
    reference = models["savedmodel"].embed(images)
    assert reference.shape == (3, manifest["embedding"]["dim"])
    for name in ("onnx", "edge"):
        assert np.abs(models[name].embed(images) - reference).max() < 1e-5


def _png(height, width):
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" * (width + 1)) for _ in range(height))

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                               0, 0, 0))
            + chunk(b"IDAT", data + compressor.flush()) + chunk(b"IEND", b""))


def test_a_file_beyond_the_bounds_is_refused_alike_from_its_header(manifest, models,
                                                                   grpc_target, tmp_path,
                                                                   serving_modules):
    image_input = serving_modules["image_input"]
    side, pixels = manifest["bounds"]["max_side"], manifest["bounds"]["max_pixels"]
    wide = _png(2, side + 1)
    expected = (f"refused before decoding: an image must have sides in [1, {side}] and at most "
                f"{pixels} pixels; its header declares height, width, pixels "
                f"[2 {side + 1} {2 * (side + 1)}]")
    path = tmp_path / "wide.png"
    path.write_bytes(wide)
    assert graph_message(grpc_target, "serving_bytes", "image_bytes", [wide]) == expected
    for runtime in ("savedmodel", "onnx"):
        with pytest.raises(ValueError) as error:
            models[runtime].embed_files([str(path)])
        assert str(error.value) == f"Cannot read image {path}: {expected}", runtime
    with pytest.raises(image_input.InputError) as error:
        models["edge"].embed_files([str(path)])
    assert str(error.value) == f"{path}: {expected}"
    with pytest.raises(image_input.InputError) as error:
        image_input.check_encoded_batch([wide], image_input.Contract(channels=1))
    assert str(error.value) == f"image_bytes[0]: {expected}"


def test_files_that_together_exceed_the_pixel_bound_are_refused_alike(manifest, grpc_target,
                                                                      serving_modules, models):
    """Each file within the bounds, their sum beyond: the graph and the clients refuse the
    request; ExportedModel, which is not a server, splits the files into requests instead."""
    image_input = serving_modules["image_input"]
    side, pixels = manifest["bounds"]["max_side"], manifest["bounds"]["max_pixels"]
    square = min(side, int(pixels ** 0.5))
    count = pixels // (square * square) + 1
    files = [_png(square, square)] * count
    expected = (f"request larger than the bound of {pixels} pixels; the pixels its files "
                f"declare [{count * square * square}]")
    assert graph_message(grpc_target, "serving_bytes", "image_bytes", files) == expected
    with pytest.raises(image_input.InputError) as error:
        image_input.check_encoded_batch(files, image_input.Contract(channels=1))
    assert str(error.value) == expected
    embedded = models["savedmodel"].embed_bytes(files)
    assert embedded.shape == (count, manifest["embedding"]["dim"])


def test_the_clients_default_bounds_are_the_exports(serving_modules):
    """serving/ cannot import dnc_keras: its copy of the default bounds is held to the one."""
    from dnc_keras.export.signatures import DEFAULT_BOUNDS

    contract = serving_modules["image_input"].Contract()
    assert {"max_side": contract.max_side, "max_batch": contract.max_batch,
            "max_pixels": contract.max_pixels} == DEFAULT_BOUNDS.to_dict()


def test_a_request_of_max_batch_images_is_served(manifest, models, digits, encode):
    """The in-graph batch function takes a whole request at the batch bound (it refuses a call
    larger than its own maximum, which once was 64 under a bound of 256)."""
    batch = manifest["bounds"]["max_batch"]
    images = np.resize(digits[0], (batch, *digits[0].shape[1:]))
    reference = models["onnx"].embed(images, batch_size=batch)
    assert np.abs(models["savedmodel"].embed(images, batch_size=batch) - reference).max() < 1e-5
    served = models["savedmodel"].embed_bytes([encode(image) for image in images],
                                              batch_size=batch)
    assert np.abs(served - reference).max() < 1e-5
    assert manifest["savedmodel"]["batching"]["max_batch_size"] == batch


def test_edge_files_go_in_requests_within_the_bounds_and_embed_as_alone(
        tmp_path, digits, encode, serving_modules, export_dir):
    """edge_infer.py plans requests from the files' headers (at most max_batch files and
    max_pixels pixels each) and decodes one request at a time; every file's embedding equals
    the one it gets alone."""
    edge = serving_modules["edge_infer"].EdgeModel(os.path.join(export_dir, "digits.onnx"))
    images, _ = digits
    paths = []
    for i, side in enumerate([8, 12, 8, 20, 9, 8, 16]):
        image = np.kron(images[i], np.ones((side // 4, side // 4, 1), np.uint8))[:side, :side]
        image = np.pad(image, ((0, side - image.shape[0]), (0, side - image.shape[1]), (0, 0)))
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(image))
        paths.append(str(path))
    alone = np.stack([edge.embed_files([p])[0] for p in paths])
    calls = []
    embed = edge.embed
    edge.embed = lambda batch: calls.append(batch.shape) or embed(batch)
    edge.max_batch, edge.max_pixels = 3, 500
    together = edge.embed_files(paths)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    # Requests (by declared pixels 64 144 64 | 400 81 | 64 256): never more than 3 files or
    # 500 pixels, split further by decoded size.
    planned = list(serving_modules["edge_infer"]._requests(
        [8 * 8, 12 * 12, 8 * 8, 20 * 20, 9 * 9, 8 * 8, 16 * 16], 3, 500))
    assert planned == [[0, 1, 2], [3, 4], [5, 6]]
    assert sorted(calls) == sorted([(2, 8, 8, 1), (1, 12, 12, 1), (1, 20, 20, 1),
                                    (1, 9, 9, 1), (1, 8, 8, 1), (1, 16, 16, 1)])
