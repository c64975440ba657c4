"""`dnc-keras validate-export`: checks an export folder end to end, the way its users will load it.

Layout and manifest; the SavedModel's signatures as saved_model_cli shows them; the warm-up
requests TF Serving replays; ONNX's checker; SavedModel vs ONNX Runtime (and the Keras model,
when the source run is still there) on the run's images at two batch sizes and a resized
size; the encoded-bytes signature; unit norms; the edge variants.
"""

import dataclasses
import os

import numpy as np

from dnc_keras import serving_signatures as sig
from dnc_keras.exported import read_manifest

TOLERANCE = 1e-5


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


def validate_export(export_dir, tolerance=TOLERANCE):
    """Runs every check on `export_dir` (DIR/NAME); returns a list of `Check`.

    A check that cannot run because an earlier one failed is reported as failed, naming why.
    """
    checks = []

    def record(name, fn):
        try:
            detail = fn()
            checks.append(Check(name, True, detail or ""))
            return True
        except Exception as error:  # every failure becomes a line of the report
            checks.append(Check(name, False, f"{type(error).__name__}: {error}"))
            return False

    state = {}
    if not record("manifest", lambda: _check_manifest(export_dir, state)):
        return checks
    record("savedmodel signatures", lambda: _check_signatures(state))
    record("warm-up requests", lambda: _check_warmup(state))
    record("onnx checker", lambda: _check_onnx(state))
    if record("parity images", lambda: _parity_images(state)):
        record("parity savedmodel vs onnxruntime",
               lambda: _check_parity(state, tolerance))
        record("encoded bytes signature", lambda: _check_bytes(state, tolerance))
        for mode in state["manifest"].get("variants", {}):
            record(f"variant {mode}", lambda mode=mode: _check_variant(state, mode))
    return checks


def _check_manifest(export_dir, state):
    manifest = read_manifest(export_dir)
    state["manifest"] = manifest
    state["dir"] = export_dir
    required = {"savedmodel": os.path.join(manifest["savedmodel"]["path"], "saved_model.pb"),
                "variables": os.path.join(manifest["savedmodel"]["path"], "variables"),
                "warm-up": manifest["savedmodel"]["warmup"],
                "onnx": manifest["onnx"]["path"]}
    missing = [f"{what} ({path})" for what, path in required.items()
               if not os.path.exists(os.path.join(export_dir, path))]
    if missing:
        raise FileNotFoundError(f"missing from {export_dir}: {', '.join(missing)}")
    for key in ("embedding", "input", "preprocessing", "model", "source_run", "metrics"):
        if key not in manifest:
            raise ValueError(f"manifest has no {key!r}")
    return (f"{manifest['name']} version {manifest['version']}, d={manifest['embedding']['dim']}, "
            f"input {manifest['input']['model_input_shape']}")


def _check_signatures(state):
    import tensorflow as tf

    manifest = state["manifest"]
    loaded = tf.saved_model.load(os.path.join(state["dir"], manifest["savedmodel"]["path"]))
    state["loaded"] = loaded
    found = []
    for name, contract in manifest["savedmodel"]["signatures"].items():
        if name not in loaded.signatures:
            raise ValueError(f"signature {name!r} missing; found {sorted(loaded.signatures)}")
        fn = loaded.signatures[name]
        inputs = fn.structured_input_signature[1]
        outputs = fn.structured_outputs
        _compare(name, "inputs", inputs, contract["inputs"])
        _compare(name, "outputs", outputs, contract["outputs"])
        found.append(name)
    return ", ".join(found)


def _compare(signature, side, specs, contract):
    if sorted(specs) != sorted(contract):
        raise ValueError(f"{signature} {side} are {sorted(specs)}; manifest says "
                         f"{sorted(contract)}")
    for key, spec in specs.items():
        shape = [-1 if d is None else d for d in spec.shape.as_list()]
        expected = contract[key]
        if spec.dtype.name != expected["dtype"] or shape != expected["shape"]:
            raise ValueError(f"{signature} {side}[{key!r}] is {spec.dtype.name} {shape}; "
                             f"manifest says {expected['dtype']} {expected['shape']}")


def _check_warmup(state):
    import tensorflow as tf

    from dnc_keras.export import read_warmup

    manifest = state["manifest"]
    requests = read_warmup(os.path.join(state["dir"], manifest["savedmodel"]["path"]))
    if not requests:
        raise ValueError("the warm-up file holds no request")
    for request in requests:
        fn = state["loaded"].signatures[request.model_spec.signature_name or
                                        sig.DEFAULT_SIGNATURE]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = fn(**inputs)[sig.OUTPUT_KEY].numpy()
        if out.shape[1] != manifest["embedding"]["dim"]:
            raise ValueError(f"warm-up {request.model_spec.signature_name} returned {out.shape}")
    return f"{len(requests)} request(s) replayed: " + ", ".join(
        r.model_spec.signature_name for r in requests)


def _check_onnx(state):
    from dnc_keras import onnx_export

    path = os.path.join(state["dir"], state["manifest"]["onnx"]["path"])
    onnx_export.check_onnx(path)
    state["session"] = onnx_export.session(path)
    declared = state["session"].get_inputs()[0]
    return f"{declared.name}: {declared.type} {declared.shape}"


def _parity_images(state):
    """The source run's images when its dataset loads, else seeded random images."""
    manifest = state["manifest"]
    height, width, channels = manifest["input"]["model_input_shape"]
    config = manifest["source_run"].get("config") or {}
    images = None
    if config:
        from dnc_keras.export import parity_data

        images, _, source = parity_data(config)
    if images is None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (16, height, width, channels), dtype=np.uint8)
        source = {"source": "random uint8 images"}
    state["images"] = images[:64]
    state["model"] = _keras_model(manifest)
    return f"{len(state['images'])} images from {source['source']}"


def _keras_model(manifest):
    run_dir = manifest["source_run"].get("path")
    if not run_dir or not os.path.exists(os.path.join(run_dir, "model.keras")):
        return None
    from dnc_keras.export import load_run

    return load_run(run_dir)[0]


def _check_parity(state, tolerance):
    import tensorflow as tf

    from dnc_keras import onnx_export
    from dnc_keras.export import keras_reference

    images = state["images"]
    serve = state["loaded"].signatures[sig.DEFAULT_SIGNATURE]
    resized = np.repeat(np.repeat(images, 3, axis=1), 2, axis=2)  # another shape, not square
    diffs, norms = {}, []
    for label, batch in (("batch 1", images[:1]), (f"batch {len(images)}", images),
                         (f"{resized.shape[1]}x{resized.shape[2]}", resized)):
        tf_out = serve(**{sig.IMAGES_KEY: tf.constant(batch)})[sig.OUTPUT_KEY].numpy()
        ort_out = onnx_export.run(state["session"], batch)
        diffs[f"onnx vs savedmodel, {label}"] = float(np.abs(tf_out - ort_out).max())
        norms.append(np.abs(np.linalg.norm(tf_out, axis=1) - 1).max())
    if state["model"] is not None:
        reference = keras_reference(state["model"], images,
                                    state["manifest"]["preprocessing"]["invert"])
        tf_out = serve(**{sig.IMAGES_KEY: tf.constant(images)})[sig.OUTPUT_KEY].numpy()
        diffs["savedmodel vs keras"] = float(np.abs(tf_out - reference).max())
    worst = max(diffs.values())
    if worst > tolerance or max(norms) > 1e-5:
        raise ValueError(f"max |diff| {diffs}, max norm error {max(norms):.2e}; "
                         f"tolerance {tolerance}")
    return "; ".join(f"{k}: {v:.1e}" for k, v in diffs.items())


def _check_bytes(state, tolerance):
    import tensorflow as tf

    from dnc_keras.export import encode_png

    images = state["images"][:8]
    signatures = state["loaded"].signatures
    encoded = tf.constant([encode_png(image) for image in images])
    from_bytes = signatures[sig.BYTES_SIGNATURE](**{sig.BYTES_KEY: encoded})[sig.OUTPUT_KEY]
    from_pixels = signatures[sig.DEFAULT_SIGNATURE](**{sig.IMAGES_KEY: tf.constant(images)})
    diff = float(np.abs(from_bytes.numpy() - from_pixels[sig.OUTPUT_KEY].numpy()).max())
    if diff > tolerance:
        raise ValueError(f"PNG bytes and pixels disagree by {diff:.2e}")
    return f"{len(images)} PNG files match the pixel signature within {diff:.1e}"


def _check_variant(state, mode):
    from dnc_keras import onnx_export

    variant = state["manifest"]["variants"][mode]
    path = os.path.join(state["dir"], variant["path"])
    onnx_export.check_onnx(path)
    out = onnx_export.run(onnx_export.session(path), state["images"])
    reference = onnx_export.run(state["session"], state["images"])
    diff = float(np.abs(out - reference).max())
    summary = f"max |diff| vs float32 {diff:.1e}"
    if "MAP@R" in variant:
        summary += f", MAP@R {variant['MAP@R_float32']:.4f} -> {variant['MAP@R']:.4f}"
    return summary


def format_report(checks):
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.passed else 'FAIL'} {c.name:{width}s}  {c.detail}"
                     for c in checks)
