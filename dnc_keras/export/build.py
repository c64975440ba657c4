"""`dnc-keras export`: a trained model and its preprocessing record -> a deployable export folder.

    DIR/NAME/
      N/                       SavedModel in TF Serving's versioned layout
        assets.extra/tf_serving_warmup_requests   (PredictionLog TFRecord, replayed at load)
        assets.extra/dnc_keras_manifest.json      (the manifest, travels with the version)
      NAME.onnx                the same graph for ONNX Runtime
      NAME.int8.onnx ...       optional edge variants
      manifest.json            preprocessing record, bounds, embedding contract, artifacts and
                               their SHA-256, source run, parity and retrieval checks

Everything is written into a staging folder and moved into place only after the checks pass:
parity with the run's own evaluation path on real inputs (`parity.py`), and retrieval metrics of
the SavedModel and ONNX Runtime on the run's test split within `quality.AGREEMENT` of the run's
(`quality.py`). TF Serving polls DIR/NAME and would load a half-written or wrong version.

Export needs a model and its preprocessing record, never the training code: a run folder is
read as files (model.keras, config.json, metrics.json), the sources from `dnc_keras.datasets`.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

from dnc_keras import preprocessing as pp
from dnc_keras.datasets.sources import SourceSet, folder_sources, run_sources
from dnc_keras.export import onnx, parity, quality
from dnc_keras.export import signatures as sig
from dnc_keras.export.manifest import (DISTANCE, MANIFEST_COPY, MANIFEST_FORMAT, MANIFEST_NAME,
                                       WARMUP_FILE, artifact_hashes)
from dnc_keras.files import write_json
from dnc_keras.preprocessing import Preprocessing

RECALL_KS = (1, 2, 4, 8)
# Images on which an edge variant's MAP@R is compared with float32's.
VARIANT_IMAGES = 5000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportRefused(RuntimeError):
    """A check failed; nothing was written to the export folder."""


@dataclasses.dataclass
class Run:
    """A run folder read as files: the model, its record, config and metrics."""

    path: str
    model: object
    preprocessing: Preprocessing
    config: dict
    metrics: dict


def load_run(run_dir):
    """The `Run` of a folder written by `dnc-keras train`, loaded in this process.

    The model loads with Keras's safe mode on; `import dnc_keras` has registered its classes.
    """
    import keras

    paths = {name: os.path.join(run_dir, name)
             for name in ("config.json", "model.keras", "metrics.json", "preprocessing.json")}
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir} does not exist: expected a run folder written by "
                                "`dnc-keras train`")
    if not os.path.exists(paths["config.json"]):
        raise FileNotFoundError(f"{paths['config.json']} not found: {run_dir} is not a run "
                                "folder written by `dnc-keras train`")
    if not os.path.exists(paths["model.keras"]):
        raise FileNotFoundError(f"{run_dir} holds an unfinished run (no model.keras yet): run "
                                "the same `dnc-keras train` command again to resume it")
    config = _read_json(paths["config.json"])
    metrics = _read_json(paths["metrics.json"]) if os.path.exists(paths["metrics.json"]) else {}
    if not zipfile.is_zipfile(paths["model.keras"]):
        raise ValueError(f"cannot load {paths['model.keras']}: not a readable .keras archive "
                         "(truncated or corrupt); train the run again with --overwrite")
    try:
        model = keras.saving.load_model(paths["model.keras"], compile=False, safe_mode=True)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot load {paths['model.keras']}: {reason}") from None
    record = getattr(model, "preprocessing", None)
    if record is None and os.path.exists(paths["preprocessing.json"]):
        record = Preprocessing.from_dict(_read_json(paths["preprocessing.json"]))
    if record is None:
        raise ValueError(f"{run_dir} records no preprocessing (model.keras and "
                         "preprocessing.json): it was trained by an older dnc_keras; retrain it")
    return Run(run_dir, model, record, config, metrics)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def next_version(export_dir):
    """1 + the highest numeric version folder in `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def evaluation_sets(run, data=None):
    """(source sets to judge the export on, the run's metrics on them, where they come from).

    The run's test split and its metrics.json; with `data`, every image of that folder and
    the Keras model's metrics on it (for runs trained on every class).
    """
    if data is not None:
        sets = [folder_sources(data)]
        reference = _keras_metrics(run, sets)
        return sets, reference, f"folder {data}"
    config = run.config
    sets = run_sources(config.get("dataset", "glyphs"), config.get("data_dir"),
                       config.get("train_classes", "standard"), config.get("seed", 0),
                       config.get("image_size"))
    if not sets:
        return [], {}, "none: the run trained on every class (pass --data DIR to check one)"
    return sets, run.metrics.get("test", {}), f"the run's test split ({config.get('dataset')})"


def _keras_metrics(run, sets):
    def embed(sources):
        if isinstance(sources, np.ndarray) and sources.dtype == np.uint8:
            return run.model.embed(pp.transform_arrays(sources, run.preprocessing))
        return run.model.embed(pp.load_files(sources, run.preprocessing))

    return _metrics(embed, sets)


def _metrics(embed, sets):
    """{evaluation name: metrics} (MAP@R and R@K; NMI is left to the run)."""
    from dnc_keras.evaluation import evaluate

    return evaluate(embed, sets, ks=RECALL_KS, nmi=False)


def export_run(run_dir, name, version=None, out="saved_models", bounds=sig.DEFAULT_BOUNDS,
               quantize=(), overwrite=False, data=None):
    """Exports a run folder's model to OUT/NAME (see the module docstring); returns the manifest.

    Args:
        run_dir: run folder written by `dnc-keras train` (model.keras, config.json).
        name: model name, as TF Serving will serve it (letters, digits, `_.-`).
        version: version folder number. Defaults to one more than the highest present.
        out: the export root. Defaults to `"saved_models"`.
        bounds: `signatures.Bounds` of a request. Defaults to `signatures.DEFAULT_BOUNDS`.
        quantize: edge variants to add, among `"int8"` and `"float16"`. Defaults to none.
        overwrite: replace an existing version folder. Defaults to `False`.
        data: a folder `<class>/<image>` to judge the export on instead of the run's test
            split (for runs trained on every class). Defaults to `None`.
    """
    run = load_run(run_dir)
    sets, reference, judged_on = evaluation_sets(run, data)
    parity_sources = sets[0].sources if sets else _train_sources(run)
    return export_model(run.model, os.path.join(out, name), run.preprocessing, name=name,
                        version=version, bounds=bounds, quantize=quantize, overwrite=overwrite,
                        parity_sources=parity_sources, evaluation=(sets, reference, judged_on),
                        provenance={"path": os.path.abspath(run_dir), "config": run.config,
                                    "metrics": run.metrics})


def _train_sources(run):
    config = run.config
    try:
        sets = run_sources(config.get("dataset", "glyphs"), config.get("data_dir"),
                           config.get("train_classes", "standard"), config.get("seed", 0),
                           config.get("image_size"), split="train")
    except (ValueError, FileNotFoundError):
        return None
    return sets[0].sources if sets else None


def export_model(model, export_dir, preprocessing=None, name=None, version=None,
                 bounds=sig.DEFAULT_BOUNDS, quantize=(), overwrite=False, parity_sources=None,
                 evaluation=None, provenance=None):
    """Exports a DnCModel to `export_dir` = DIR/NAME; returns the manifest.

    Args:
        model: a `DnCModel` (float32 images in [0, 1] of its input shape -> embeddings).
        export_dir: the model's folder; versions go in numbered subfolders.
        preprocessing: its `Preprocessing` record. Defaults to `model.preprocessing`.
        name: model name. Defaults to the folder's name.
        parity_sources: file paths or uint8 arrays for the parity checks and warm-up.
            Defaults to synthetic photographs.
        evaluation: (source sets, the run's metrics on them, a description) for the retrieval
            check (`evaluation_sets`). Defaults to `None`: no retrieval check.
        provenance: the source run `{"path", "config", "metrics"}` for the manifest.
        Others: as `export_run`.
    """
    record = preprocessing or getattr(model, "preprocessing", None)
    if record is None:
        raise ValueError("export needs the model's preprocessing record: pass preprocessing= "
                         "(a dnc_keras.Preprocessing) or build the DnCModel with one")
    record = Preprocessing.from_dict(record)
    name = name or os.path.basename(os.path.normpath(export_dir))
    if not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '_', '.' or '-' (it becomes a URL "
                         f"and file name). Received: name={name!r}")
    quantize = tuple(dict.fromkeys(quantize or ()))
    for mode in quantize:
        if mode not in onnx.QUANTIZE_MODES:
            raise ValueError(f"quantize must be among {onnx.QUANTIZE_MODES}. Received: {mode!r}")
    input_shape = tuple(int(s) for s in model.encoder.input_shape[1:])
    if input_shape != record.shape:
        raise ValueError(f"the model takes {input_shape} but its preprocessing record makes "
                         f"{record.shape}")
    if bounds.max_side < max(record.size):
        raise ValueError(f"max_side must be at least the model's input size {record.size}. "
                         f"Received: max_side={bounds.max_side}")
    version = int(version or next_version(export_dir))
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir) and not overwrite:
        raise ValueError(f"{version_dir} already exists; pass another --version (TF Serving "
                         f"serves the highest) or --overwrite")
    if parity_sources is None or not len(parity_sources):
        parity_sources = _synthetic_photos(record)
    inputs = parity.parity_inputs(parity_sources, record)

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_dir)
    try:
        saved_model = os.path.join(staging, str(version))
        write_saved_model(model, saved_model, record, bounds, name, inputs[0][1])
        onnx_path = os.path.join(staging, f"{name}.onnx")
        onnx.export_onnx(model, onnx_path, record, bounds)
        report = parity.check_parity(model, record, saved_model, onnx_path, inputs)
        if not report["passed"]:
            raise ExportRefused(
                f"parity failed (tolerance {parity.PARITY_TOLERANCE}): "
                f"{json.dumps(report['max_abs_diff'])}; nothing was written to {export_dir}")
        manifest = _manifest(model, record, bounds, name, version, report, provenance or {})
        # Hashed before the checks below load the staged export, which verifies them.
        manifest["artifacts"] = artifact_hashes(staging, [str(version), f"{name}.onnx"])
        write_json(os.path.join(staging, MANIFEST_NAME), manifest)
        if evaluation is not None:
            manifest["quality"] = _check_quality(staging, *evaluation)
        for mode in quantize:
            manifest["variants"][mode] = _variant(staging, manifest, onnx_path, name, mode,
                                                  evaluation[0] if evaluation else [])
        write_json(os.path.join(saved_model, MANIFEST_COPY), manifest)
        write_json(os.path.join(staging, MANIFEST_NAME), manifest)
        _move_into_place(staging, export_dir, version_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _synthetic_photos(record, count=8, seed=0):
    """uint8 photographs of random smooth structure, for a model exported without data."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = record.size
    photos = []
    for i in range(count):
        coarse = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w + 7 * i, h + 3 * i), Image.BICUBIC)
        if record.channels == 1:
            image = image.convert("L")
        photos.append(np.asarray(image)[..., None] if record.channels == 1
                      else np.asarray(image))
    return photos


def _check_quality(staging, sets, reference, judged_on):
    """Retrieval metrics of the SavedModel and ONNX Runtime against the run's; refuses on a
    gap above `quality.AGREEMENT`."""
    from dnc_keras.export.loading import ExportedModel

    if not sets:
        return {"judged_on": judged_on, "checked": False}
    report = {"judged_on": judged_on, "checked": True, "run": reference}
    for runtime in ("savedmodel", "onnx"):
        exported = ExportedModel(staging, runtime=runtime)
        metrics = _metrics(exported.embed_sources, sets)
        agreement = quality.compare(metrics, reference)
        report[runtime] = {"metrics": metrics, "agreement": agreement}
        if not agreement["agree"]:
            raise ExportRefused(
                f"the {runtime} export's retrieval differs from the run's on {judged_on}: "
                f"{json.dumps(agreement['evaluations'])} (tolerance {quality.AGREEMENT} "
                "MAP@R); nothing was written")
    return report


def write_saved_model(model, path, record, bounds, name, warmup_file):
    """SavedModel with `serving_default` (uint8 images) and `serving_bytes` (encoded files),
    plus TF Serving's warm-up file built from one real encoded image."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(sig.DEFAULT_SIGNATURE, sig.images_function(model, record, bounds),
                         input_signature=[sig.images_spec(record.channels)])
    archive.add_endpoint(sig.BYTES_SIGNATURE, sig.bytes_function(model, record, bounds),
                         input_signature=[sig.bytes_spec()])
    archive.write_out(path, verbose=False)
    write_warmup(path, name, record, warmup_file)


def write_warmup(saved_model, name, record, encoded):
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per signature, so TF Serving
    traces and runs both graphs at load time rather than on the first user request."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    pixels = pp.decode(tf.constant(encoded), record).numpy()[None]
    requests = {
        sig.DEFAULT_SIGNATURE: (sig.IMAGES_KEY, tf.make_tensor_proto(pixels)),
        sig.BYTES_SIGNATURE: (sig.BYTES_KEY, tf.make_tensor_proto([parity.encode(pixels[0])])),
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


def _variant(staging, manifest, onnx_path, name, mode, sets):
    """Writes NAME.MODE.onnx beside the ONNX model, records it in the staged manifest and
    measures what it costs in retrieval; refuses an int8 variant that loses more than
    `quality.INT8_MAP_LOSS` MAP@R."""
    from dnc_keras.export.loading import ExportedModel

    path = os.path.join(staging, f"{name}.{mode}.onnx")
    onnx.quantize(onnx_path, path, mode)
    report = {"path": os.path.basename(path), "bytes": os.path.getsize(path),
              "float32_bytes": os.path.getsize(onnx_path)}
    if mode == "int8":
        report["note"] = ("dynamic quantization scales activations per batch, so an image's "
                          "embedding depends slightly on the rest of its batch")
    manifest["variants"][mode] = report
    manifest["artifacts"].update(artifact_hashes(staging, [report["path"]]))
    write_json(os.path.join(staging, MANIFEST_NAME), manifest)
    if sets:
        ev = sets[0]
        count = min(len(ev.query_labels), VARIANT_IMAGES)
        subset = SourceSet(ev.name, ev.query[:count], ev.query_labels[:count])
        full = ExportedModel(staging, runtime="onnx")
        small = ExportedModel(staging, runtime="onnx", onnx_file=os.path.basename(path))
        before = _metrics(full.embed_sources, [subset])[ev.name]["MAP@R"]
        after = _metrics(small.embed_sources, [subset])[ev.name]["MAP@R"]
        report.update({"MAP@R_float32": before, "MAP@R": after, "MAP@R_images": count})
        if mode == "int8" and before - after > quality.INT8_MAP_LOSS:
            raise ExportRefused(f"the int8 variant loses {before - after:.4f} MAP@R against "
                                f"float32 ({before:.4f} -> {after:.4f}; at most "
                                f"{quality.INT8_MAP_LOSS}); nothing was written")
    return report


def _manifest(model, record, bounds, name, version, report, source):
    import keras
    import onnx as onnx_lib
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    dim = int(model.subspaces.embedding_dim)
    config = source.get("config", {})
    images_contract = {"dtype": "uint8", "shape": [-1, -1, -1, record.channels]}
    outputs = {sig.OUTPUT_KEY: {"dtype": "float32", "shape": [-1, dim]}}
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preprocessing": record.to_dict(),
        "bounds": bounds.to_dict(),
        "savedmodel": {
            "path": str(version),
            "warmup": os.path.join(str(version), WARMUP_FILE),
            "batching": {"in_graph": True, "max_batch_size": bounds.max_batch,
                         "batch_timeout_micros": sig.BATCH_TIMEOUT_MICROS},
            "signatures": {
                sig.DEFAULT_SIGNATURE: {"inputs": {sig.IMAGES_KEY: images_contract},
                                        "outputs": outputs},
                sig.BYTES_SIGNATURE: {"inputs": {sig.BYTES_KEY: {"dtype": "string",
                                                                 "shape": [-1]}},
                                      "outputs": outputs},
            },
        },
        "onnx": {"path": f"{name}.onnx", "opset": onnx.DEFAULT_OPSET,
                 "inputs": {sig.IMAGES_KEY: images_contract}, "outputs": outputs},
        "variants": {},
        "embedding": {"dim": dim, "dtype": "float32", "normalisation": "l2",
                      "distance": DISTANCE,
                      "note": "unit-length vectors: euclidean distance d and cosine "
                              "similarity s agree (d^2 = 2 - 2 s)"},
        "input": {
            "images": f"uint8 [batch, height, width, {record.channels}], values 0..255, any "
                      f"height and width in [1, {bounds.max_side}]",
            "image_bytes": "string [batch] of JPEG or PNG files (REST: {\"b64\": ...}), decoded "
                           "as the preprocessing record says",
            "channels": record.channels,
            "model_input_shape": list(record.shape),
        },
        "model": {
            "learners": int(config.get("learners", model.subspaces.max_learners)),
            "active_learners": int(model.subspaces.active_learners.numpy()),
            "subspaces": model.subspaces.mode,
            "conquered": bool(model.is_conquered),
            "backbone": config.get("backbone"),
            "parameters": int(model.count_params()),
        },
        "source_run": {"path": source.get("path"), "config": config},
        "metrics": source.get("metrics", {}),
        "parity": report,
        "software": {"dnc_keras": importlib.metadata.version("dnc_keras"),
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "tf2onnx": tf2onnx.__version__, "onnx": onnx_lib.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }


def _move_into_place(staging, export_dir, version_dir, manifest):
    """ONNX files and the manifest first, the version folder last: TF Serving only sees the
    new version once everything it describes is there."""
    for entry in os.listdir(staging):
        if entry.endswith(".onnx"):
            os.replace(os.path.join(staging, entry), os.path.join(export_dir, entry))
    os.replace(os.path.join(staging, MANIFEST_NAME), os.path.join(export_dir, MANIFEST_NAME))
    if os.path.exists(version_dir):
        shutil.rmtree(version_dir)
    os.replace(os.path.join(staging, str(manifest["version"])), version_dir)
