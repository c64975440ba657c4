"""ExportedModel: embeddings from an export folder (`dnc-keras export`), through the SavedModel or
ONNX Runtime, with the manifest's input contract checked before anything runs.

Files are decoded by the export's own preprocessing record: through the SavedModel, the
`serving_bytes` signature decodes them in the graph; through ONNX Runtime, the graph decoder
of `dnc_keras.preprocessing` does (the same pixels as serving/image_input.py's Pillow decoder).
"""

import os

import numpy as np

from dnc_keras import progress
from dnc_keras.export import signatures as sig
from dnc_keras.export.manifest import inside, read_manifest
from dnc_keras.preprocessing import Preprocessing
from dnc_keras_cli.options import RUNTIMES



def check_images(images, channels, bounds):
    """The serving graph's input checks, in numpy, so a bad batch fails before it runs."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255). Received dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(f"images must be uint8 [batch, height, width, {channels}] ({channels} "
                         f"is the model's channel count). Received shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"images is an empty batch. Received shape {images.shape}")
    if images.shape[0] > bounds.max_batch:
        raise ValueError(f"images holds more than the bound of {bounds.max_batch} images per "
                         f"request. Received shape {images.shape}")
    if min(images.shape[1:3]) < 1 or max(images.shape[1:3]) > bounds.max_side:
        raise ValueError(f"images must have height and width in [1, {bounds.max_side}] (the "
                         f"serving bound). Received shape {images.shape}")
    if images.shape[0] * images.shape[1] * images.shape[2] > bounds.max_pixels:
        raise ValueError(f"request larger than the bound of {bounds.max_pixels} pixels. "
                         f"Received shape {images.shape}")
    return images


class ExportedModel:
    """Embeddings of an exported model, through its SavedModel or its ONNX file.

    Args:
        export_dir: the export folder DIR/NAME (holding manifest.json, N/ and NAME.onnx).
        runtime: `"savedmodel"` (TensorFlow) or `"onnx"` (ONNX Runtime). Defaults to
            `"savedmodel"`.
        version: SavedModel version to load. Defaults to the manifest's.
        onnx_file: an ONNX file of the export other than the float32 one (a variant's path,
            relative to the folder). Defaults to `None`.

    Example:
    ```python
    model = ExportedModel("saved_models/glyphs", runtime="onnx")
    embeddings = model.embed_files(["a.png", "b.jpg"])  # [2, d], L2-normalised
    ```
    """

    def __init__(self, export_dir, runtime="savedmodel", version=None, onnx_file=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}. Received: {runtime!r}")
        self.export_dir = export_dir
        self.runtime = runtime
        self.manifest = read_manifest(export_dir)
        self.preprocessing = Preprocessing.from_dict(self.manifest["preprocessing"])
        self.bounds = sig.Bounds(**self.manifest["bounds"])
        self.channels = self.preprocessing.channels
        self.input_shape = self.preprocessing.shape
        self.max_side = self.bounds.max_side
        self.embedding_dim = int(self.manifest["embedding"]["dim"])
        self.version = int(version or self.manifest["version"])
        if runtime == "savedmodel":
            import tensorflow as tf

            path = inside(export_dir, str(self.version))
            if not os.path.isdir(path):
                raise FileNotFoundError(f"SavedModel version folder {path} not found")
            self._loaded = tf.saved_model.load(path)
            self._pixels = self._loaded.signatures[sig.DEFAULT_SIGNATURE]
            self._bytes = self._loaded.signatures[sig.BYTES_SIGNATURE]
        else:
            from dnc_keras.export import onnx

            path = inside(export_dir, onnx_file or self.manifest["onnx"]["path"])
            if not os.path.exists(path):
                raise FileNotFoundError(f"ONNX model {path} not found")
            self._session = onnx.session(path)

    def embed(self, images, batch_size=64, bar=None):
        """uint8 images [batch, h, w, channels] (one size) -> float32 [batch, d].

        `bar`: a `dnc_keras.progress.bar` advanced by each image embedded (callers that embed
        many images in several calls keep one bar); by default none."""
        images = np.asarray(images)
        if not len(images):
            return self._run(check_images(images, self.channels, self.bounds))
        chunks = []
        for i in range(0, len(images), batch_size):
            chunks.append(self._run(check_images(images[i:i + batch_size], self.channels,
                                                 self.bounds)))
            if bar is not None:
                bar.update(len(chunks[-1]))
        return np.concatenate(chunks)

    def _run(self, images):
        if self.runtime == "onnx":
            from dnc_keras.export import onnx

            return onnx.run(self._session, images)
        import tensorflow as tf

        return self._pixels(**{sig.IMAGES_KEY: tf.constant(images)})[sig.OUTPUT_KEY].numpy()

    def embed_bytes(self, encoded, batch_size=64, names=None):
        """Encoded image files (bytes) -> float32 [n, d]: SavedModel's `serving_bytes`, or the
        graph decoder then ONNX Runtime. `names` label the files in errors."""
        encoded = list(encoded)
        if not encoded:
            raise ValueError("embed_bytes needs at least one encoded image")
        names = list(names or (f"image_bytes[{i}]" for i in range(len(encoded))))
        # A gallery or a test split takes a while: a bar on a terminal (dnc_keras.progress).
        with progress.bar(total=len(encoded), desc=f"embedding ({self.runtime})",
                          unit="img") as bar:
            return self._embed_bytes(encoded, batch_size, names, bar)

    def _embed_bytes(self, encoded, batch_size, names, bar):
        from dnc_keras.preprocessing import JPEG_MAGIC, PNG_MAGIC

        if self.runtime == "onnx":
            return self.embed_arrays([self.decode(data, name) for data, name in
                                      zip(encoded, names)], batch_size, bar)
        import tensorflow as tf

        # serving_bytes takes JPEG and PNG; other formats (GIF, BMP) are decoded here.
        served = [i for i, data in enumerate(encoded) if data.startswith((PNG_MAGIC, JPEG_MAGIC))]
        others = [i for i in range(len(encoded)) if i not in set(served)]
        out = np.zeros((len(encoded), self.embedding_dim), np.float32)
        for start in range(0, len(served), batch_size):
            chunk = served[start:start + batch_size]
            batch = tf.constant([encoded[i] for i in chunk])
            out[chunk] = self._bytes(**{sig.BYTES_KEY: batch})[sig.OUTPUT_KEY].numpy()
            bar.update(len(chunk))
        if others:
            out[others] = self.embed_arrays([self.decode(encoded[i], names[i])
                                             for i in others], batch_size, bar)
        return out

    def decode(self, data, name="image"):
        """Encoded bytes -> uint8 [h, w, channels], as the model's training data was read."""
        import tensorflow as tf

        from dnc_keras import preprocessing as pp

        try:
            return pp.decode(tf.constant(data), self.preprocessing).numpy()
        except (tf.errors.OpError, UnicodeDecodeError) as error:
            raise ValueError(f"Cannot read image {name}: {pp.error_reason(error)}") from None

    def embed_arrays(self, images, batch_size=64, bar=None):
        """uint8 arrays of any sizes -> float32 [n, d]; images of one size run together.
        `bar` as for `embed`."""
        out = np.zeros((len(images), self.embedding_dim), np.float32)
        by_shape = {}
        for i, image in enumerate(images):
            by_shape.setdefault(np.shape(image), []).append(i)
        for indices in by_shape.values():
            out[indices] = self.embed(np.stack([images[i] for i in indices]), batch_size, bar)
        return out

    def embed_files(self, paths, batch_size=64):
        """Image files (JPEG, PNG) -> float32 [len(paths), d]."""
        paths = list(paths)
        if not paths:
            raise ValueError("embed_files needs at least one image path")
        encoded = []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    encoded.append(f.read())
            except OSError as error:
                raise ValueError(f"Cannot read image {path}: {error.strerror}") from None
        return self.embed_bytes(encoded, batch_size, names=[str(p) for p in paths])

    def embed_sources(self, sources, batch_size=64):
        """Sources of a `dnc_keras.datasets.SourceSet`: file paths or uint8 arrays."""
        if isinstance(sources, np.ndarray) and sources.dtype == np.uint8:
            return self.embed(sources, batch_size)
        return self.embed_files(sources, batch_size)
