"""`dnc-keras export`: a trained run -> a deployable export folder.

    DIR/NAME/
      N/                       SavedModel in TF Serving's versioned layout
        assets.extra/tf_serving_warmup_requests   (PredictionLog TFRecord, replayed at load)
        assets.extra/dnc_keras_manifest.json      (the manifest, travels with the version)
      NAME.onnx                the same graph for ONNX Runtime
      NAME.int8.onnx ...       optional edge variants
      manifest.json            embedding size, distance, input contract, preprocessing,
                               learners, source run, metrics, parity measured at export

Everything is written into temporary names and moved into place only after the parity checks
pass: TF Serving polls DIR/NAME and would load a half-written or wrong version folder.
"""

import datetime
import importlib.metadata
import io
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from dnc_keras import onnx_export
from dnc_keras import serving_signatures as sig
from dnc_keras.exported import MANIFEST_FORMAT, MANIFEST_NAME, read_manifest

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MANIFEST_COPY = os.path.join("assets.extra", "dnc_keras_manifest.json")
PARITY_TOLERANCE = 1e-5
# Parity images: enough for a second batch size that exercises batching, few enough to be quick.
PARITY_IMAGES = 64
# Images on which an edge variant's MAP@R is compared with float32's (the whole test split of
# the built-in datasets), embedded VARIANT_BATCH at a time.
VARIANT_IMAGES = 5000
VARIANT_BATCH = 256
DISTANCE = "euclidean"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_run(run_dir):
    """(model, config dict, metrics dict) of a run folder written by `dnc-keras train`."""
    import keras

    from dnc_keras import layers, losses, model  # noqa: F401  (registers the classes)

    paths = {name: os.path.join(run_dir, name)
             for name in ("config.json", "model.keras", "metrics.json")}
    for name in ("config.json", "model.keras"):
        if not os.path.exists(paths[name]):
            raise FileNotFoundError(f"{paths[name]} not found: is {run_dir} a run folder "
                                    "written by `dnc-keras train`?")
    with open(paths["config.json"]) as f:
        config = json.load(f)
    metrics = {}
    if os.path.exists(paths["metrics.json"]):
        with open(paths["metrics.json"]) as f:
            metrics = json.load(f)
    loaded = keras.saving.load_model(paths["model.keras"], compile=False)
    return loaded, config, metrics


def next_version(export_dir):
    """1 + the highest numeric version folder in `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def export_run(run_dir, name, version=None, out="saved_models", max_side=sig.DEFAULT_MAX_SIDE,
               invert=None, quantize=(), overwrite=False):
    """Exports the run's model to OUT/NAME (see the module docstring); returns the manifest.

    Args:
        run_dir: run folder written by `dnc-keras train` (config.json, model.keras).
        name: model name, as TF Serving will serve it (letters, digits, `_.-`).
        version: version folder number. Defaults to one more than the highest present.
        out: the export root. Defaults to `"saved_models"`.
        max_side: largest image height or width accepted at serving time. Defaults to
            `serving_signatures.DEFAULT_MAX_SIDE`.
        invert: serve 1 - x. Defaults to what the run's dataset loader did (Omniglot inverts).
        quantize: edge variants to add, among `"int8"` and `"float16"`. Defaults to none.
        overwrite: replace an existing version folder. Defaults to `False`.
    """
    model, config, metrics = load_run(run_dir)
    images, labels, source = parity_data(config)
    if invert is None:
        # The loader's choice; without the data, Omniglot's loader is the one that inverts.
        invert = bool(source.get("invert", config.get("dataset") == "omniglot"))
    return export_model(model, os.path.join(out, name), name=name, version=version,
                        max_side=max_side, invert=invert, quantize=quantize,
                        overwrite=overwrite, images=images, labels=labels,
                        provenance={"run_dir": os.path.abspath(run_dir), "config": config,
                                    "metrics": metrics, "parity_images": source})


def parity_data(config):
    """Up to PARITY_IMAGES real images of the run's test classes (uint8), their labels, and a
    description; falls back on random images when the dataset cannot be loaded."""
    try:
        from dnc_keras import job
        from dnc_keras.config import TrainConfig

        known = {k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}
        data = job.load_data(TrainConfig(**known))
    except Exception as error:  # parity still runs, on random images, and says so
        warnings.warn(f"Could not load the run's dataset ({error}); checking parity on "
                      "random images instead")
        return None, None, {"source": f"random uint8 images (dataset unavailable: {error})"}
    x, y, split = ((data.x_test, data.y_test, "test") if len(data.y_test)
                   else (data.x_train, data.y_train, "train"))
    images = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return images, y, {"source": f"{data.name} {split} split", "count": int(len(y)),
                       "invert": bool(dict(data.info).get("invert", False))}


def export_model(model, export_dir, name=None, version=None, max_side=sig.DEFAULT_MAX_SIDE,
                 invert=False, quantize=(), overwrite=False, images=None, labels=None,
                 provenance=None):
    """Exports a DnCModel to `export_dir` = DIR/NAME; returns the manifest.

    Args:
        model: a `DnCModel` (float32 images in [0, 1] of its encoder's shape -> embeddings).
        export_dir: the model's folder; versions go in numbered subfolders.
        name: model name. Defaults to the folder's name.
        images: uint8 [N, H, W, C] real images: the first `PARITY_IMAGES` for the parity
            checks and warm-up, up to `VARIANT_IMAGES` for the variants' MAP@R. Defaults to
            random images.
        labels: labels of `images`, to report MAP@R of quantized variants. Defaults to `None`.
        provenance: `{"run_dir", "config", "metrics", "parity_images"}` for the manifest.
        Others: as `export_run`.
    """
    name = name or os.path.basename(os.path.normpath(export_dir))
    if not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '_', '.' or '-' (it becomes a URL "
                         f"and file name). Received: name={name!r}")
    quantize = tuple(quantize or ())
    for mode in quantize:
        if mode not in onnx_export.QUANTIZE_MODES:
            raise ValueError(f"quantize must be among {onnx_export.QUANTIZE_MODES}. "
                             f"Received: {mode!r}")
    max_side = int(max_side)
    input_shape = tuple(int(s) for s in model.encoder.input_shape[1:])
    if max_side < max(input_shape[:2]):
        raise ValueError(f"max_side must be at least the model's input size {input_shape[:2]}. "
                         f"Received: max_side={max_side}")
    version = int(version or next_version(export_dir))
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir) and not overwrite:
        raise ValueError(f"{version_dir} already exists; pass another --version (TF Serving "
                         f"serves the highest) or --overwrite")
    if images is None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (PARITY_IMAGES,) + input_shape, dtype=np.uint8)

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_dir)
    try:
        saved_model = os.path.join(staging, str(version))
        write_saved_model(model, saved_model, input_shape, max_side, invert, name,
                          warmup_images=images[:1])
        onnx_path = os.path.join(staging, f"{name}.onnx")
        onnx_export.export_onnx(model, onnx_path, input_shape, invert=invert)
        parity = check_parity(model, saved_model, onnx_path, images[:PARITY_IMAGES], invert)
        if not parity["passed"]:
            raise RuntimeError(f"Export parity failed (tolerance {PARITY_TOLERANCE}): "
                               f"{json.dumps(parity['max_abs_diff'])}; nothing was written "
                               f"to {export_dir}")
        variants = {mode: _variant(onnx_path, name, mode, images, labels) for mode in quantize}
        manifest = _manifest(model, name, version, input_shape, max_side, invert, parity,
                             variants, provenance or {})
        with open(os.path.join(saved_model, MANIFEST_COPY), "w") as f:
            json.dump(manifest, f, indent=2)
        _move_into_place(staging, export_dir, version_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def write_saved_model(model, path, input_shape, max_side, invert, name, warmup_images):
    """SavedModel with `serving_default` (uint8 images) and `serving_bytes` (encoded files),
    plus TF Serving's warm-up file built from `warmup_images`."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        sig.DEFAULT_SIGNATURE,
        sig.images_function(model, input_shape, max_side=max_side, invert=invert),
        input_signature=[sig.images_spec(input_shape[-1])])
    archive.add_endpoint(
        sig.BYTES_SIGNATURE,
        sig.bytes_function(model, input_shape, max_side=max_side, invert=invert),
        input_signature=[sig.bytes_spec()])
    archive.write_out(path, verbose=False)
    write_warmup(path, name, warmup_images)


def write_warmup(saved_model, name, images):
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per signature, so TF Serving
    traces and runs both graphs at load time rather than on the first user request."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    requests = {
        sig.DEFAULT_SIGNATURE: (sig.IMAGES_KEY, tf.make_tensor_proto(images)),
        sig.BYTES_SIGNATURE: (sig.BYTES_KEY, tf.make_tensor_proto([encode_png(images[0])])),
    }
    os.makedirs(os.path.join(saved_model, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(saved_model, WARMUP_FILE)) as writer:
        for signature, (key, tensor) in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = signature
            request.inputs[key].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup(saved_model):
    """The PredictRequests of a version folder's warm-up file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model, WARMUP_FILE)
    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests


def encode_png(image):
    """uint8 [h, w, 1 or 3] -> PNG bytes (lossless, so decoded pixels equal the array)."""
    from PIL import Image

    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def keras_reference(model, images, invert=False):
    """What the Keras model gives for uint8 images of its own input size."""
    x = images.astype(np.float32) / 255.0
    return model.embed(1.0 - x if invert else x)


def check_parity(model, saved_model, onnx_path, images, invert=False):
    """Max |difference| of embeddings: Keras vs SavedModel vs ONNX Runtime.

    Compared on `images` at batch 1 and the whole batch; on the images upscaled 2x by pixel
    repetition (bilinear resizing back is exact, so the graph's resize must reproduce Keras
    on the originals); and through `serving_bytes` on PNG-encoded copies.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures[sig.DEFAULT_SIGNATURE]
    serve_bytes = loaded.signatures[sig.BYTES_SIGNATURE]
    session = onnx_export.session(onnx_path)

    def savedmodel(x):
        return serve(**{sig.IMAGES_KEY: tf.constant(x)})[sig.OUTPUT_KEY].numpy()

    reference = keras_reference(model, images, invert)
    upscaled = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    encoded = tf.constant([encode_png(image) for image in images])
    outputs = {
        "savedmodel_batch1": savedmodel(images[:1]) - reference[:1],
        f"savedmodel_batch{len(images)}": savedmodel(images) - reference,
        "onnx_batch1": onnx_export.run(session, images[:1]) - reference[:1],
        f"onnx_batch{len(images)}": onnx_export.run(session, images) - reference,
        "savedmodel_resized_2x": savedmodel(upscaled) - reference,
        "onnx_resized_2x": onnx_export.run(session, upscaled) - reference,
        "savedmodel_png_bytes": serve_bytes(**{sig.BYTES_KEY: encoded})[sig.OUTPUT_KEY].numpy()
        - reference,
    }
    diffs = {k: float(np.abs(v).max()) for k, v in outputs.items()}
    norms = np.linalg.norm(savedmodel(images), axis=1)
    return {"images": int(len(images)), "tolerance": PARITY_TOLERANCE, "max_abs_diff": diffs,
            "max_norm_error": float(np.abs(norms - 1.0).max()),
            "passed": max(diffs.values()) <= PARITY_TOLERANCE}


def _variant(onnx_path, name, mode, images, labels):
    """Writes NAME.MODE.onnx beside the ONNX model and measures what it costs in retrieval."""
    path = os.path.join(os.path.dirname(onnx_path), f"{name}.{mode}.onnx")
    onnx_export.quantize(onnx_path, path, mode)
    images = images[:VARIANT_IMAGES]

    def embed(model_path):
        session = onnx_export.session(model_path)
        return np.concatenate([onnx_export.run(session, images[i:i + VARIANT_BATCH])
                               for i in range(0, len(images), VARIANT_BATCH)])

    full, small = embed(onnx_path), embed(path)
    report = {"path": os.path.basename(path), "bytes": os.path.getsize(path),
              "float32_bytes": os.path.getsize(onnx_path),
              "max_abs_diff": float(np.abs(small - full).max()), "batch": VARIANT_BATCH}
    if mode == "int8":
        report["note"] = ("dynamic quantization scales activations per batch, so an image's "
                          "embedding depends slightly on the rest of its batch")
    if labels is not None and len(np.unique(labels[:len(images)])) > 1:
        from dnc_keras.evaluation import retrieval_metrics

        labels = np.asarray(labels)[:len(images)]
        before = retrieval_metrics(full, labels, nmi=False)["MAP@R"]
        after = retrieval_metrics(small, labels, nmi=False)["MAP@R"]
        report.update({"MAP@R_float32": before, "MAP@R": after, "MAP@R_images": len(labels)})
    return report


def _manifest(model, name, version, input_shape, max_side, invert, parity, variants, source):
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    height, width, channels = input_shape
    dim = int(model.subspaces.embedding_dim)
    config = source.get("config", {})
    images_contract = {"dtype": "uint8", "shape": [-1, -1, -1, channels]}
    outputs = {sig.OUTPUT_KEY: {"dtype": "float32", "shape": [-1, dim]}}
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "savedmodel": {
            "path": str(version),
            "warmup": os.path.join(str(version), WARMUP_FILE),
            "signatures": {
                sig.DEFAULT_SIGNATURE: {"inputs": {sig.IMAGES_KEY: images_contract},
                                        "outputs": outputs},
                sig.BYTES_SIGNATURE: {"inputs": {sig.BYTES_KEY: {"dtype": "string",
                                                                 "shape": [-1]}},
                                      "outputs": outputs},
            },
        },
        "onnx": {"path": f"{name}.onnx", "opset": onnx_export.DEFAULT_OPSET,
                 "inputs": {sig.IMAGES_KEY: images_contract}, "outputs": outputs},
        "variants": variants,
        "embedding": {"dim": dim, "dtype": "float32", "normalisation": "l2",
                      "distance": DISTANCE,
                      "note": "unit-length vectors: euclidean distance d and cosine "
                              "similarity s agree (d^2 = 2 - 2 s)"},
        "input": {
            "images": f"uint8 [batch, height, width, {channels}], values 0..255, any height "
                      f"and width in [1, {max_side}]",
            "image_bytes": "string [batch] of JPEG or PNG files (REST: {\"b64\": ...}), "
                           f"decoded to {channels} channel(s) like Pillow's convert",
            "channels": channels,
            "color": "grayscale" if channels == 1 else "rgb",
            "model_input_shape": [height, width, channels],
            "max_side": max_side,
        },
        "preprocessing": {
            "resize": f"bilinear to {height}x{width}, antialias off, half-pixel centres "
                      "(tf.image.resize; ONNX Resize linear/half_pixel)",
            "scale": "float32 x / 255, in [0, 1]",
            "invert": bool(invert),
            "inside_graph": True,
            "training_images": source.get("parity_images", {}).get("source"),
        },
        "model": {
            "learners": int(config.get("learners", model.subspaces.max_learners)),
            "active_learners": int(model.subspaces.active_learners.numpy()),
            "subspaces": model.subspaces.mode,
            "conquered": bool(model.is_conquered),
            "backbone": config.get("backbone"),
            "parameters": int(model.count_params()),
        },
        "source_run": {"path": source.get("run_dir"), "config": config},
        "metrics": source.get("metrics", {}),
        "parity": parity,
        "software": {"dnc_keras": importlib.metadata.version("dnc_keras"), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }


def _move_into_place(staging, export_dir, version_dir, manifest):
    """ONNX files and the manifest first, the version folder last: TF Serving only sees the
    new version once everything it describes is there."""
    for entry in os.listdir(staging):
        if entry.endswith(".onnx"):
            os.replace(os.path.join(staging, entry), os.path.join(export_dir, entry))
    tmp_manifest = os.path.join(staging, MANIFEST_NAME)
    with open(tmp_manifest, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp_manifest, os.path.join(export_dir, MANIFEST_NAME))
    if os.path.exists(version_dir):
        shutil.rmtree(version_dir)
    os.replace(os.path.join(staging, str(manifest["version"])), version_dir)


__all__ = ["export_run", "export_model", "check_parity", "read_manifest", "read_warmup",
           "next_version", "load_run"]
