"""REST client of an exported dnc_keras model on TF Serving (port 8501).

Needs numpy and Pillow (pip install numpy pillow): image_input.py decodes and checks the images
with them; HTTP itself is the standard library's urllib. --index also needs faiss
(gallery_search.py). Nothing of TensorFlow or dnc_keras.

    python serving/rest_client.py --url http://localhost:8501 --model glyphs a.png b.jpg
    python serving/rest_client.py --url http://localhost:8501 --model glyphs --pixels a.png

Speaks TF Serving's REST predict API:
    POST /v1/models/NAME[/versions/N]:predict
    {"signature_name": "serving_bytes", "instances": [{"b64": "<base64 file>"}, ...]}
    {"signature_name": "serving_default", "instances": [<[h][w][c] uint8 lists>, ...]}
    -> 200 {"predictions": [[d floats], ...]}  or  4xx {"error": "<message>"}
Default: files go as base64 to `serving_bytes`; --pixels decodes here and sends pixel lists
to `serving_default` (about 4x larger requests). Prints one JSON line per image: its
embedding, or with --index INDEX its matches and answer ("unknown" beyond the index's
calibrated threshold), as in grpc_client.py. Requests are checked before they are sent, as in
grpc_client.py.
"""

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_input  # noqa: E402  (beside this script, not a package)

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"


class ServingError(RuntimeError):
    """The server rejected or failed a request; the message is the server's."""


class RestEmbeddingClient:
    """Embeddings from TF Serving's REST API.

    Args:
        url: base URL, e.g. `"http://localhost:8501"`.
        model_name: the served model's name.
        contract: the export's `image_input.Contract` (`load_contract(manifest.json)`):
            decoding and request bounds. Defaults to `Contract()`: the default bounds and the
            model's channel count read from its metadata (GET /v1/models/NAME/metadata).
        version: model version. Defaults to `None` (the server's latest).
        timeout: seconds per request. Defaults to `30.0`.
    """

    def __init__(self, url, model_name, contract=None, version=None, timeout=30.0):
        self.model_name = model_name
        self.contract = contract or image_input.Contract()
        self.timeout = timeout
        base = f"{url.rstrip('/')}/v1/models/{model_name}"
        self._model_url = base if version is None else f"{base}/versions/{int(version)}"
        self.channels = self.contract.channels or self._channels_from_metadata()

    def _request(self, url, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")
            raise ServingError(f"HTTP {error.code}: {message}") from error
        except urllib.error.URLError as error:
            raise ServingError(f"cannot reach {url}: {error.reason}") from error

    def status(self):
        """GET /v1/models/NAME: the model's version status."""
        return self._request(self._model_url)

    def metadata(self):
        """GET /v1/models/NAME/metadata: the signature definitions."""
        return self._request(f"{self._model_url}/metadata")

    def _channels_from_metadata(self):
        signature = self.metadata()["metadata"]["signature_def"]["signature_def"]
        dims = signature[DEFAULT_SIGNATURE]["inputs"]["images"]["tensor_shape"]["dim"]
        return int(dims[-1]["size"])

    def predict(self, signature, instances):
        """One :predict call in the row ("instances") format; returns float32 [batch, d]."""
        body = {"signature_name": signature, "instances": instances}
        response = self._request(f"{self._model_url}:predict", body)
        if "predictions" not in response:
            raise ServingError(f"response has no 'predictions': {str(response)[:200]}")
        return np.asarray(response["predictions"], np.float32)

    def embed(self, images):
        """uint8 images [batch, h, w, channels] -> float32 embeddings [batch, d]."""
        c = self.contract
        images = image_input.check_images(images, self.channels, c.max_side, c.max_batch,
                                          c.max_pixels)
        return self.predict(DEFAULT_SIGNATURE, images.tolist())

    def embed_bytes(self, encoded):
        """Encoded JPEG/PNG files (list of bytes) -> float32 embeddings [batch, d]."""
        instances = [{"b64": base64.b64encode(data).decode("ascii")}
                     for data in image_input.check_encoded_batch(encoded, self.contract)]
        return self.predict(BYTES_SIGNATURE, instances)

    def embed_files(self, paths, pixels=False):
        """Image files -> embeddings; `pixels=True` decodes here and sends uint8 lists."""
        return image_input.embed_files(self, paths, pixels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://localhost:8501", help="TF Serving REST URL")
    image_input.add_client_arguments(
        parser, pixels_help="decode here, send uint8 pixel lists to serving_default")
    args = parser.parse_args(argv)
    return image_input.run_client(
        "rest_client", args,
        lambda contract: RestEmbeddingClient(args.url, args.model, contract, args.version,
                                             args.timeout),
        (image_input.InputError, ServingError))


if __name__ == "__main__":
    sys.exit(main())
