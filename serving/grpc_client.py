"""gRPC client of an exported dnc_keras model on TF Serving (PredictionService, port 8500).

    python serving/grpc_client.py --server localhost:8500 --model glyphs a.png b.jpg
    python serving/grpc_client.py --server localhost:8500 --model glyphs --pixels a.png
    python serving/grpc_client.py --server localhost:8500 --model glyphs \
        --manifest saved_models/glyphs/manifest.json --index glyphs_index a.png

Default: the files' bytes go to the `serving_bytes` signature (the server decodes them);
--pixels decodes here and sends uint8 arrays to `serving_default`. Prints one JSON line per
image: {"image": path, "embedding": [...]}; with --index, the image's matches in that index
and its answer instead, "unknown" beyond the index's calibrated threshold
({"image", "label", "unknown", "threshold", "matches": [{"id", "label", "distance",
"path"}]}; gallery_search.py, needs faiss).

Requests are checked before they are sent (image_input.py), with the same rules the server's
graph enforces: uint8, [batch, height, width, channels], the model's channels, non-empty,
sides within the bound, complete JPEG/PNG files.
"""

import argparse
import os
import sys

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_input  # noqa: E402  (beside this script, not a package)

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
IMAGES_KEY = "images"
BYTES_KEY = "image_bytes"
OUTPUT_KEY = "embeddings"
# gRPC's default 4 MB cap is one 1000x1000 RGB image; a batch of 64 needs more.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServingError(RuntimeError):
    """The server rejected or failed a request; the message is the server's."""


def to_tensor_proto(array):
    """numpy uint8 array or list of bytes -> TensorProto (the wire format of PredictRequest)."""
    if isinstance(array, np.ndarray) and array.dtype == np.uint8:
        shape = array.shape
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8,
                                       tensor_content=np.ascontiguousarray(array).tobytes())
    elif isinstance(array, np.ndarray) and array.dtype != object:
        raise TypeError(f"images must be uint8; got {array.dtype} (see image_input.check_images)")
    else:
        items = list(array)
        shape = (len(items),)
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=items)
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in shape]))
    return proto


def from_tensor_proto(proto):
    """float32 TensorProto -> numpy array (TF Serving fills tensor_content; float_val is the
    other legal encoding)."""
    if proto.dtype != types_pb2.DT_FLOAT:
        raise ServingError(f"expected float32 embeddings; got dtype enum {proto.dtype}")
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype="<f4")
    else:
        values = np.asarray(proto.float_val, np.float32)
    return values.reshape(shape).astype(np.float32)


class GrpcEmbeddingClient:
    """Embeddings from a TF Serving PredictionService.

    Args:
        target: host:port of TF Serving's gRPC port, e.g. `"localhost:8500"`.
        model_name: the served model's name (`--name` of `dnc-keras export`).
        contract: the export's `image_input.Contract` (`load_contract(manifest.json)`):
            decoding and request bounds. Defaults to `Contract()`: the default bounds and the
            model's channel count read from the server's signature metadata.
        version: model version to ask for. Defaults to `None` (the server's latest).
        timeout: seconds per call. Defaults to `30.0`.
    """

    def __init__(self, target, model_name, contract=None, version=None, timeout=30.0):
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.contract = contract or image_input.Contract()
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.channels = self.contract.channels or self._channels_from_metadata()

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, message, signature=None):
        message.model_spec.name = self.model_name
        if self.version is not None:
            message.model_spec.version.value = int(self.version)
        if signature:
            message.model_spec.signature_name = signature

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(f"{error.code().name}: {error.details()}") from error

    def signature_defs(self):
        """The served model's SignatureDefs ({name: SignatureDef}) via GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        self._spec(request)
        response = self._call(self._stub.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return dict(signatures.signature_def)

    def _channels_from_metadata(self):
        inputs = self.signature_defs()[DEFAULT_SIGNATURE].inputs
        return int(inputs[IMAGES_KEY].tensor_shape.dim[-1].size)

    def predict(self, signature, key, tensor):
        """One Predict call; returns the `embeddings` output as float32 [batch, d]."""
        request = predict_pb2.PredictRequest()
        self._spec(request, signature)
        request.inputs[key].CopyFrom(to_tensor_proto(tensor))
        request.output_filter.append(OUTPUT_KEY)
        response = self._call(self._stub.Predict, request)
        return from_tensor_proto(response.outputs[OUTPUT_KEY])

    def embed(self, images):
        """uint8 images [batch, h, w, channels] -> float32 embeddings [batch, d]."""
        c = self.contract
        images = image_input.check_images(images, self.channels, c.max_side, c.max_batch,
                                          c.max_pixels)
        return self.predict(DEFAULT_SIGNATURE, IMAGES_KEY, images)

    def embed_bytes(self, encoded):
        """Encoded JPEG/PNG files (list of bytes) -> float32 embeddings [batch, d]."""
        checked = image_input.check_encoded_batch(encoded, self.contract)
        return self.predict(BYTES_SIGNATURE, BYTES_KEY, checked)

    def embed_files(self, paths, pixels=False):
        """Image files -> embeddings; `pixels=True` decodes here and sends uint8 arrays."""
        return image_input.embed_files(self, paths, pixels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="localhost:8500", help="TF Serving gRPC host:port")
    image_input.add_client_arguments(
        parser, pixels_help="decode here, send uint8 arrays to serving_default")
    args = parser.parse_args(argv)
    return image_input.run_client(
        "grpc_client", args,
        lambda contract: GrpcEmbeddingClient(args.server, args.model, contract, args.version,
                                             args.timeout),
        (image_input.InputError, ServingError))


if __name__ == "__main__":
    sys.exit(main())
