"""ExportedModel: embeddings from an export folder (`dnc-keras export`), through the SavedModel or
ONNX Runtime, with the export checked before anything runs and every request bounded.

Loading checks, one line naming the file on failure: the manifest's schema and paths
(`manifest.read_manifest`), the SHA-256 of every artifact it loads against the manifest
(`manifest.verify_artifacts`), and the bounds the artifact enforces (the SavedModel's graph
constants, the ONNX file's metadata) against the manifest's copy.

Requests are checked here, in numpy, with the messages of the serving graph's asserts
(`signatures.request_messages`): ONNX has no assert op, so without them ONNX Runtime would
embed an empty batch or a 20,000 x 20,000 image. Files are refused from their headers before
decoding (`dnc_keras.image_header`) and decoded by the export's own preprocessing record:
through the SavedModel, the `serving_bytes` signature decodes them in the graph; through ONNX
Runtime, the graph decoder of `dnc_keras.preprocessing` does (the same pixels as
serving/image_input.py's Pillow decoder).
"""

import os

import numpy as np

from dnc_keras import progress
from dnc_keras.export import signatures as sig
from dnc_keras.export.manifest import (MANIFEST_COPY, check_bounds_agree, inside,
                                       read_manifest, read_manifest_file, verify_artifacts)
from dnc_keras.preprocessing import Preprocessing
from dnc_keras_cli.options import RUNTIMES


def shape_text(shape):
    """`[2 8 8 1]`: a shape as the graph's asserts print it."""
    return "[" + " ".join(str(int(d)) for d in shape) + "]"


def check_images(images, channels, bounds):
    """The serving graph's input checks, in numpy, so a bad request fails before it runs, with
    the graph's own message (`signatures.request_messages`) and the shape."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255). Received dtype {images.dtype}")
    message = sig.request_messages(channels, bounds)
    shape = images.shape
    if images.ndim != 4 or shape[-1] != channels:
        failed = "shape"
    elif shape[0] == 0:
        failed = "batch"
    elif shape[0] > bounds.max_batch:
        failed = "max_batch"
    elif min(shape[1:3]) < 1:
        failed = "empty"
    elif max(shape[1:3]) > bounds.max_side:
        failed = "max_side"
    elif shape[0] * shape[1] * shape[2] > bounds.max_pixels:
        failed = "max_pixels"
    else:
        return images
    raise ValueError(f"{message[failed]} {shape_text(shape)}")


def request_chunks(pixels, batch_size, bounds):
    """Consecutive index ranges of items with `pixels` each, every range within the request
    bounds and `batch_size` (an item beyond them alone is a range of its own, for the checks to
    refuse)."""
    limit = max(1, min(int(batch_size), bounds.max_batch))
    chunks, start, total = [], 0, 0
    for i, count in enumerate(pixels):
        if i > start and (i - start >= limit or total + count > bounds.max_pixels):
            chunks.append(range(start, i))
            start, total = i, 0
        total += count
    if start < len(pixels):
        chunks.append(range(start, len(pixels)))
    return chunks


class ExportedModel:
    """Embeddings of an exported model, through its SavedModel or its ONNX file.

    Args:
        export_dir: the export folder DIR/NAME (holding manifest.json, N/ and NAME.onnx).
        runtime: `"savedmodel"` (TensorFlow) or `"onnx"` (ONNX Runtime). Defaults to
            `"savedmodel"`.
        version: SavedModel version to load (checked against that version's own copy of the
            manifest). Defaults to the manifest's.
        onnx_file: an ONNX file of the export other than the float32 one (a variant's path,
            relative to the folder). Defaults to `None`.

    Raises:
        ManifestError: a manifest field missing or mistyped, a path leaving the folder, an
            artifact changed since export, bounds that differ from the artifact's.
        FileNotFoundError: no manifest, or the artifact to load is missing.

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
        self.version = int(version or self.manifest["version"])
        if self.version != self.manifest["version"]:
            self.manifest = _version_manifest(export_dir, self.version)
        self.preprocessing = Preprocessing.from_dict(self.manifest["preprocessing"])
        self.bounds = sig.Bounds(**{k: self.manifest["bounds"][k]
                                    for k in ("max_side", "max_batch", "max_pixels")})
        self.channels = self.preprocessing.channels
        self.input_shape = self.preprocessing.shape
        self.max_side = self.bounds.max_side
        self.embedding_dim = int(self.manifest["embedding"]["dim"])
        if runtime == "savedmodel":
            self._load_savedmodel()
        else:
            self._load_onnx(onnx_file or self.manifest["onnx"]["path"])

    def _load_savedmodel(self):
        import tensorflow as tf

        relative = str(self.version)
        path = inside(self.export_dir, relative)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"SavedModel version folder {path} not found")
        verify_artifacts(self.export_dir, self.manifest, [relative])
        check_bounds_agree(f"{path} (its graph constants)", sig.graph_bounds(path),
                           self.manifest)
        self._loaded = tf.saved_model.load(path)
        self._pixels = self._loaded.signatures[sig.DEFAULT_SIGNATURE]
        self._bytes = self._loaded.signatures[sig.BYTES_SIGNATURE]

    def _load_onnx(self, relative):
        import json

        from dnc_keras.export import onnx

        path = inside(self.export_dir, relative)
        if not os.path.exists(path):
            raise FileNotFoundError(f"ONNX model {path} not found")
        verify_artifacts(self.export_dir, self.manifest, [relative])
        self._session = onnx.session(path)
        metadata = self._session.get_modelmeta().custom_metadata_map
        try:
            stored = json.loads(metadata[onnx.METADATA_PREFIX + "bounds"])
        except (KeyError, ValueError):
            stored = None
        check_bounds_agree(f"{path} (its metadata)", stored, self.manifest)

    def embed(self, images, batch_size=64, bar=None):
        """uint8 images [batch, h, w, channels] (one size) -> float32 [batch, d]; each
        `batch_size` images are one request, checked against the bounds.

        `bar`: a `dnc_keras.progress.bar` advanced by each image embedded (callers that embed
        many images in several calls keep one bar); by default none."""
        images = np.asarray(images)
        starts = range(0, len(images), batch_size) if images.ndim and len(images) else [0]
        chunks = []
        for i in starts:
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

        try:
            return self._pixels(**{sig.IMAGES_KEY: tf.constant(images)})[sig.OUTPUT_KEY].numpy()
        except tf.errors.OpError as error:
            from dnc_keras.preprocessing import error_reason

            raise ValueError(error_reason(error)) from None

    def embed_bytes(self, encoded, batch_size=64, names=None):
        """Encoded image files (bytes) -> float32 [n, d]: SavedModel's `serving_bytes`, or the
        graph decoder then ONNX Runtime. Each file is refused from its header beyond the
        bounds; files go in requests within the bounds. `names` label the files in errors."""
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
        # serving_bytes takes JPEG and PNG; other formats (GIF, BMP) are decoded here.
        served = [i for i, data in enumerate(encoded) if data.startswith((PNG_MAGIC, JPEG_MAGIC))]
        others = [i for i in range(len(encoded)) if i not in set(served)]
        out = np.zeros((len(encoded), self.embedding_dim), np.float32)
        pixels = [self.declared_size(encoded[i], names[i])[2] for i in served]
        for chunk in request_chunks(pixels, batch_size, self.bounds):
            indices = [served[k] for k in chunk]
            out[indices] = self._serve_bytes([encoded[i] for i in indices],
                                             [names[i] for i in indices])
            bar.update(len(indices))
        if others:
            out[others] = self.embed_arrays([self.decode(encoded[i], names[i])
                                             for i in others], batch_size, bar)
        return out

    def _serve_bytes(self, encoded, names):
        import tensorflow as tf

        from dnc_keras.preprocessing import error_reason

        try:
            return self._bytes(**{sig.BYTES_KEY: tf.constant(encoded)})[sig.OUTPUT_KEY].numpy()
        except tf.errors.OpError as error:
            if len(encoded) > 1:  # find and name the culprit
                for data, name in zip(encoded, names):
                    self._serve_bytes([data], [name])
            raise ValueError(f"Cannot read image {names[0]}: {error_reason(error)}") from None

    def declared_size(self, data, name="image"):
        """(height, width, pixels) the file's header declares; ValueError naming the file for
        an unknown format, a truncated header or a size beyond the bounds."""
        import tensorflow as tf

        from dnc_keras import preprocessing as pp

        try:
            return tuple(int(v) for v in pp.header_function(
                self.bounds.max_side, self.bounds.max_pixels)(tf.constant(data)).numpy())
        except tf.errors.OpError as error:
            raise ValueError(f"Cannot read image {name}: {pp.error_reason(error)}") from None

    def decode(self, data, name="image"):
        """Encoded bytes -> uint8 [h, w, channels], as the model's training data was read;
        refused from the header beyond the bounds, before decoding."""
        import tensorflow as tf

        from dnc_keras import preprocessing as pp

        try:
            return pp.decode_function(self.preprocessing, self.bounds.max_side,
                                      self.bounds.max_pixels)(tf.constant(data)).numpy()
        except (tf.errors.OpError, UnicodeDecodeError) as error:
            raise ValueError(f"Cannot read image {name}: {pp.error_reason(error)}") from None

    def embed_arrays(self, images, batch_size=64, bar=None):
        """uint8 arrays of any sizes -> float32 [n, d]; images of one size run together, in
        requests within the bounds. `bar` as for `embed`."""
        out = np.zeros((len(images), self.embedding_dim), np.float32)
        by_shape = {}
        for i, image in enumerate(images):
            by_shape.setdefault(np.shape(image), []).append(i)
        for shape, indices in by_shape.items():
            area = int(np.prod(shape[:2])) if len(shape) >= 2 else 0
            for chunk in request_chunks([area] * len(indices), batch_size, self.bounds):
                picked = [indices[k] for k in chunk]
                out[picked] = self.embed(np.stack([images[i] for i in picked]), len(picked),
                                         bar)
        return out

    def embed_files(self, paths, batch_size=64):
        """Image files (JPEG, PNG, GIF, BMP) -> float32 [len(paths), d]."""
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


def _version_manifest(export_dir, version):
    """The manifest copy inside version folder `version` (each version keeps its own)."""
    path = inside(export_dir, os.path.join(str(version), MANIFEST_COPY))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: version {version} is not an export of "
                                "this dnc_keras")
    return read_manifest_file(path, export_dir)
