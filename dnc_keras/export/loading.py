"""ExportedModel: embeddings from an export folder (`dnc-keras export`), through the SavedModel or
ONNX Runtime, with the input contract of the manifest checked before anything runs."""

import json
import os

import numpy as np

from dnc_keras import serving_signatures as sig

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dnc_keras.export/1"
RUNTIMES = ("savedmodel", "onnx")


def read_manifest(export_dir):
    """The manifest of an export folder (DIR/NAME), checked for the fields readers rely on."""
    path = os.path.join(export_dir, MANIFEST_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {export_dir} a folder written by "
                                "`dnc-keras export` (saved_models/NAME)?")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: expected format {MANIFEST_FORMAT!r}. "
                         f"Received: {manifest.get('format')!r}")
    return manifest


def read_image(path, channels):
    """An image file as uint8 [h, w, channels], converted like the datasets do (Pillow
    `convert("L")` / `convert("RGB")`, alpha dropped). Raises ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"Reading files supports models with 1 or 3 channels. "
                         f"Received: channels={channels}")
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img.convert(mode), np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read image {path}: {error}") from error
    return array[..., None] if array.ndim == 2 else array


def check_images(images, channels, max_side):
    """The serving graph's input checks, in numpy, so a bad batch fails before it is sent."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255). Received dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(f"images must be uint8 [batch, height, width, {channels}] ({channels} "
                         f"is the model's channel count). Received shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"images is an empty batch. Received shape {images.shape}")
    if min(images.shape[1:3]) < 1 or max(images.shape[1:3]) > max_side:
        raise ValueError(f"images must have height and width in [1, {max_side}] (the serving "
                         f"bound). Received shape {images.shape}")
    return images


class ExportedModel:
    """Embeddings of an exported model, through its SavedModel or its ONNX file.

    Args:
        export_dir: the export folder DIR/NAME (holding manifest.json, N/ and NAME.onnx).
        runtime: `"savedmodel"` (TensorFlow) or `"onnx"` (ONNX Runtime, no TensorFlow at run
            time). Defaults to `"savedmodel"`.
        version: SavedModel version to load. Defaults to the manifest's.

    Example:
    ```python
    model = ExportedModel("saved_models/glyphs", runtime="onnx")
    embeddings = model.embed_files(["a.png", "b.jpg"])  # [2, d], L2-normalised
    ```
    """

    def __init__(self, export_dir, runtime="savedmodel", version=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}. Received: {runtime!r}")
        self.export_dir = export_dir
        self.runtime = runtime
        self.manifest = read_manifest(export_dir)
        contract = self.manifest["input"]
        self.input_shape = tuple(contract["model_input_shape"])
        self.channels = int(contract["channels"])
        self.max_side = int(contract["max_side"])
        self.embedding_dim = int(self.manifest["embedding"]["dim"])
        self.version = int(version or self.manifest["version"])
        if runtime == "savedmodel":
            import tensorflow as tf

            path = os.path.join(export_dir, str(self.version))
            if not os.path.isdir(path):
                raise FileNotFoundError(f"SavedModel version folder {path} not found")
            self._loaded = tf.saved_model.load(path)
            self._fn = self._loaded.signatures[sig.DEFAULT_SIGNATURE]
        else:
            from dnc_keras import onnx_export

            path = os.path.join(export_dir, self.manifest["onnx"]["path"])
            if not os.path.exists(path):
                raise FileNotFoundError(f"ONNX model {path} not found")
            self._session = onnx_export.session(path)

    def embed(self, images, batch_size=64):
        """uint8 images [batch, h, w, channels] (one size) -> float32 [batch, d]."""
        images = check_images(images, self.channels, self.max_side)
        chunks = [self._run(images[i:i + batch_size])
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks)

    def _run(self, images):
        if self.runtime == "onnx":
            from dnc_keras import onnx_export

            return onnx_export.run(self._session, images)
        import tensorflow as tf

        return self._fn(**{sig.IMAGES_KEY: tf.constant(images)})[sig.OUTPUT_KEY].numpy()

    def embed_files(self, paths, batch_size=64):
        """Image files (any sizes, any formats Pillow reads) -> float32 [len(paths), d].

        Files of one size are embedded together; the model resizes each to its input size.
        """
        paths = list(paths)
        if not paths:
            raise ValueError("embed_files needs at least one image path")
        images = [read_image(p, self.channels) for p in paths]
        out = np.zeros((len(images), self.embedding_dim), np.float32)
        by_shape = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            out[indices] = self.embed(np.stack([images[i] for i in indices]), batch_size)
        return out
