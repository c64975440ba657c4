"""Embeddings on an edge device with ONNX Runtime: needs onnxruntime, numpy and Pillow only.

    python edge_infer.py saved_models/glyphs/glyphs.onnx a.png b.jpg
    python edge_infer.py saved_models/glyphs/glyphs.int8.onnx a.png b.jpg --compare

Copy this file, image_input.py and the .onnx file (and its manifest.json, for the size bound)
to the device. Prints one JSON line per image {"image", "embedding"}; with --compare, the
distance matrix of the images instead (euclidean between unit vectors: 0 same, 2 opposite).
Images are read with Pillow as the training data was, checked against the model's input
contract, and resized and scaled inside the ONNX graph.
"""

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_input  # noqa: E402  (beside this script, not a package)

IMAGES_KEY = "images"
OUTPUT_KEY = "embeddings"


class EdgeModel:
    """An exported ONNX embedding model with its input contract.

    Args:
        onnx_path: NAME.onnx (or a variant such as NAME.int8.onnx).
        max_side: largest image side accepted. Defaults to the manifest's beside the file,
            else `4096`.
        threads: onnxruntime intra-op threads. Defaults to `None` (onnxruntime's choice).
    """

    def __init__(self, onnx_path, max_side=None, threads=None):
        if not os.path.exists(onnx_path):
            raise FileNotFoundError(f"{onnx_path} not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(onnx_path, options,
                                            providers=["CPUExecutionProvider"])
        declared = self.session.get_inputs()[0]
        if declared.name != IMAGES_KEY or declared.type != "tensor(uint8)":
            raise ValueError(f"{onnx_path}: expected a uint8 input named {IMAGES_KEY!r}; found "
                             f"{declared.name!r} {declared.type}")
        self.channels = int(declared.shape[-1])
        manifest = image_input.find_manifest(onnx_path)
        if max_side is None:
            max_side = (image_input.load_contract(manifest)[1] if manifest
                        else image_input.DEFAULT_MAX_SIDE)
        self.max_side = int(max_side)

    def embed(self, images):
        """uint8 images [batch, h, w, channels] -> float32 [batch, d], L2-normalised."""
        images = image_input.check_images(images, self.channels, self.max_side)
        return self.session.run([OUTPUT_KEY], {IMAGES_KEY: np.ascontiguousarray(images)})[0]

    def embed_files(self, paths):
        """Image files of any sizes -> float32 [len(paths), d]; one run per image size."""
        images = [image_input.read_image(p, self.channels) for p in paths]
        if not images:
            raise image_input.InputError("no images given")
        out = [None] * len(images)
        for indices in image_input.group_by_shape(images).values():
            batch = self.embed(np.stack([images[i] for i in indices]))
            for i, row in zip(indices, batch):
                out[i] = row
        return np.stack(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the exported .onnx file")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--max-side", type=int, default=None,
                        help="largest image side (default: the manifest's, else 4096)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true",
                        help="print the distance matrix of the images")
    args = parser.parse_args(argv)
    try:
        model = EdgeModel(args.model, args.max_side, args.threads)
        embeddings = model.embed_files(args.images)
    except (image_input.InputError, ValueError, FileNotFoundError) as error:
        print(f"edge_infer: error: {error}", file=sys.stderr)
        return 2
    if args.compare:
        squared = 2.0 - 2.0 * embeddings @ embeddings.T
        distances = np.sqrt(np.clip(squared, 0.0, None))
        for path, row in zip(args.images, distances):
            print(" ".join(f"{d:6.3f}" for d in row), path)
        return 0
    image_input.print_embeddings(args.images, embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
