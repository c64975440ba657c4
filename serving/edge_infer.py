"""Embeddings on an edge device with ONNX Runtime: needs onnxruntime, numpy and Pillow only.

    python edge_infer.py saved_models/glyphs/glyphs.onnx a.png b.jpg
    python edge_infer.py saved_models/glyphs/glyphs.int8.onnx a.png b.jpg --compare

Copy this file, image_input.py and the .onnx file to the device: the ONNX file carries the
export's preprocessing record and request bounds in its metadata. Where the export's
manifest.json sits beside the .onnx file, the file is checked against it first (its SHA-256
and its bounds), and refused by name if it differs. Prints one JSON line per
image {"image", "embedding"}; with --compare, the distance matrix of the images instead
(euclidean between unit vectors: 0 same, 2 opposite).

Files are decoded with Pillow exactly as the training data was (image_input.decode_image: the
same pixels as the training pipeline's decoder), checked against the bounds, and resized and
scaled inside the ONNX graph by the record's own transform: nothing is re-implemented here.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_input  # noqa: E402  (beside this script, not a package)

IMAGES_KEY = "images"
OUTPUT_KEY = "embeddings"
METADATA_PREFIX = "dnc_keras."


class EdgeModel:
    """An exported ONNX embedding model with its preprocessing record and request bounds.

    Args:
        onnx_path: NAME.onnx (or a variant such as NAME.int8.onnx).
        threads: onnxruntime intra-op threads. Defaults to `None` (onnxruntime's choice).
        providers: onnxruntime execution providers. Defaults to CUDA then CPU, among those
            the installed onnxruntime offers.
        manifest: the export's manifest.json, checked against the file (SHA-256, bounds).
            Defaults to `"auto"`: manifest.json beside the file when there is one (a device
            may hold the .onnx file alone: its metadata carries the record and bounds).

    Raises:
        image_input.InputError: the file is not a dnc_keras ONNX export, differs from its
            manifest, or holds other bounds than the manifest.
    """

    def __init__(self, onnx_path, threads=None, providers=None, manifest="auto"):
        if not os.path.exists(onnx_path):
            raise FileNotFoundError(f"{onnx_path} not found")
        if os.path.isdir(onnx_path):
            found = sorted(f for f in os.listdir(onnx_path) if f.endswith(".onnx"))
            plain = os.path.basename(os.path.normpath(onnx_path)) + ".onnx"  # export NAME/NAME.onnx
            example = os.path.join(onnx_path, plain if plain in found else
                                   (found or ["NAME.onnx"])[0])
            raise image_input.InputError(f"{onnx_path} is a folder: expected the exported "
                                         f".onnx file, e.g. {example}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise image_input.InputError(f"threads must be an integer >= 1. Received: "
                                         f"{threads!r}")
        if manifest == "auto":
            manifest = image_input.find_manifest(onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(onnx_path, options,
                                                providers=providers or choose_providers())
        except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise image_input.InputError(f"{onnx_path}: not a loadable ONNX model "
                                         f"({reason})") from None
        declared = self.session.get_inputs()[0]
        if declared.name != IMAGES_KEY or declared.type != "tensor(uint8)":
            raise image_input.InputError(f"{onnx_path}: expected a uint8 input named "
                                         f"{IMAGES_KEY!r}; found {declared.name!r} "
                                         f"{declared.type}")
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.record = json.loads(metadata[METADATA_PREFIX + "preprocessing"])
            self.bounds = json.loads(metadata[METADATA_PREFIX + "bounds"])
            self.channels = int(self.record["channels"])
            self.background = int(self.record["background"])
            self.max_side = int(self.bounds["max_side"])
            self.max_batch = int(self.bounds["max_batch"])
            self.max_pixels = int(self.bounds["max_pixels"])
        except (KeyError, TypeError, ValueError) as error:
            raise image_input.InputError(f"{onnx_path} carries no dnc_keras preprocessing "
                                         f"record and bounds ({error}): export it again") from None
        if manifest:
            image_input.verify_onnx(manifest, onnx_path, self.bounds)

    def embed(self, images):
        """uint8 images [batch, h, w, channels] -> float32 [batch, d], L2-normalised."""
        images = image_input.check_images(images, self.channels, self.max_side,
                                          self.max_batch, self.max_pixels)
        return self.session.run([OUTPUT_KEY], {IMAGES_KEY: np.ascontiguousarray(images)})[0]

    def embed_files(self, paths):
        """Image files of any sizes -> float32 [len(paths), d], each request within the bounds.

        Every file is checked from its header first (refused beyond the bounds before anything
        is decoded); files then go in requests of at most `max_batch` files and `max_pixels`
        declared pixels, and only one request's files are decoded at a time, so a long list
        of large files costs one request's memory, not the whole list's."""
        paths = [str(p) for p in paths]
        if not paths:
            raise image_input.InputError("no images given")
        pixels = [image_input.check_declared(image_input.read_bytes(p), p,
                                             self.max_side, self.max_pixels)[2] for p in paths]
        out = [None] * len(paths)
        for chunk in _requests(pixels, self.max_batch, self.max_pixels):
            images = {i: image_input.read_image(paths[i], self.channels, self.background,
                                                self.max_pixels, self.max_side) for i in chunk}
            # One run per decoded size (EXIF rotation may swap a file's declared sides).
            for indices in image_input.group_by_shape([images[i] for i in chunk]).values():
                picked = [chunk[k] for k in indices]
                # Each decoded image leaves `images` as it is batched; one alone is batched as
                # a view, not a copy.
                batch = (images.pop(picked[0])[None] if len(picked) == 1
                         else np.stack([images.pop(i) for i in picked]))
                for i, row in zip(picked, self.embed(batch)):
                    out[i] = row
        return np.stack(out)


def _requests(pixels, max_batch, max_pixels):
    """Consecutive index lists, each of at most `max_batch` files and `max_pixels` pixels in
    total (a single file within the bounds always fits)."""
    chunk, total = [], 0
    for i, count in enumerate(pixels):
        if chunk and (len(chunk) == max_batch or total + count > max_pixels):
            yield chunk
            chunk, total = [], 0
        chunk.append(i)
        total += count
    if chunk:
        yield chunk


def choose_providers(available=None):
    """CUDA, then CPU, among the execution providers the installed onnxruntime offers."""
    available = ort.get_available_providers() if available is None else available
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] \
        or ["CPUExecutionProvider"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the exported .onnx file")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime's intra-op threads (default: onnxruntime's choice)")
    parser.add_argument("--compare", action="store_true",
                        help="print the distance matrix of the images")
    args = parser.parse_args(argv)
    try:
        model = EdgeModel(args.model, args.threads)
        embeddings = model.embed_files(args.images)
    except (image_input.InputError, FileNotFoundError) as error:
        print(f"edge_infer: error: {error}", file=sys.stderr)
        return 2
    if args.compare:
        # |a|^2 + |b|^2 - 2 a.b in float64, not 2 - 2 a.b: float32 vectors are not exactly
        # unit, and an image's distance to itself would print as 0.001. (Not the differences
        # a - b either: n x n x d floats.)
        vectors = embeddings.astype(np.float64)
        norms = (vectors * vectors).sum(axis=1)
        squared = norms[:, None] + norms[None] - 2.0 * vectors @ vectors.T
        distances = np.sqrt(np.clip(squared, 0.0, None))
        for path, row in zip(args.images, distances):
            print(" ".join(f"{d:6.3f}" for d in row), path)
        return 0
    image_input.print_embeddings(args.images, embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
