"""`dnc-keras validate-export`: checks an export folder end to end, the way its users will load it.

The manifest's schema and paths; every artifact against its SHA-256; the bounds the graphs
enforce against the manifest's copy; the SavedModel's signatures as saved_model_cli shows them;
the warm-up requests TF Serving replays; ONNX's checker; parity of both signatures and ONNX
Runtime with the source run's evaluation path (when its model is still there; else SavedModel
against ONNX Runtime); retrieval on the run's test split against the run's metrics; the edge
variants.
"""

import dataclasses
import os

import numpy as np

from dnc_keras.export import parity, quality
from dnc_keras.export import signatures as sig
from dnc_keras.export.manifest import (check_bounds_agree, inside, read_manifest,
                                       verify_artifacts)
from dnc_keras.preprocessing import Preprocessing


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


def validate_export(export_dir, tolerance=parity.PARITY_TOLERANCE, data=None):
    """Runs every check on `export_dir` (DIR/NAME); returns a list of `Check`.

    Args:
        data: a folder `<class>/<image>` to measure retrieval on instead of the source run's
            test split. Defaults to `None`.

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

    state = {"dir": export_dir}
    if not record("manifest", lambda: _check_manifest(state)):
        return checks
    if not record("artifact hashes", lambda: _check_hashes(state)):
        return checks
    record("savedmodel signatures", lambda: _check_signatures(state))
    record("bounds in the graphs", lambda: _check_bounds(state))
    record("warm-up requests", lambda: _check_warmup(state))
    record("onnx checker", lambda: _check_onnx(state))
    if record("parity inputs", lambda: _parity_inputs(state, data)):
        record("parity", lambda: _check_parity(state, tolerance))
    record("retrieval against the run", lambda: _check_retrieval(state, data))
    for mode in state["manifest"].get("variants", {}):
        record(f"variant {mode}", lambda mode=mode: _check_variant(state, mode))
    return checks


def _check_manifest(state):
    manifest = read_manifest(state["dir"])
    state["manifest"] = manifest
    state["record"] = Preprocessing.from_dict(manifest["preprocessing"])
    state["bounds"] = sig.Bounds(**{k: manifest["bounds"][k]
                                    for k in ("max_side", "max_batch", "max_pixels")})
    return (f"{manifest['name']} version {manifest['version']}, d={manifest['embedding']['dim']}"
            f", input {list(state['record'].shape)}, {state['record'].describe()}")


def _check_hashes(state):
    manifest = state["manifest"]
    verify_artifacts(state["dir"], manifest)
    verify_artifacts(state["dir"], manifest, [manifest["savedmodel"]["path"]])
    return f"{len(manifest['artifacts'])} files match their SHA-256"


def _loaded(state):
    if "loaded" not in state:
        import tensorflow as tf

        manifest = state["manifest"]
        state["loaded"] = tf.saved_model.load(inside(state["dir"], manifest["savedmodel"]["path"]))
    return state["loaded"]


def _check_signatures(state):
    manifest = state["manifest"]
    loaded = _loaded(state)
    found = []
    for name, contract in manifest["savedmodel"]["signatures"].items():
        if name not in loaded.signatures:
            raise ValueError(f"signature {name!r} missing; found {sorted(loaded.signatures)}")
        fn = loaded.signatures[name]
        _compare(name, "inputs", fn.structured_input_signature[1], contract["inputs"])
        _compare(name, "outputs", fn.structured_outputs, contract["outputs"])
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


def _check_bounds(state):
    """The bounds the SavedModel's graphs hold (their named constants, and a request one pixel
    beyond max_side, refused) and each ONNX file's metadata agree with the manifest."""
    import json

    import tensorflow as tf

    from dnc_keras.export import onnx

    manifest, bounds, channels = state["manifest"], state["bounds"], state["record"].channels
    saved_model = inside(state["dir"], manifest["savedmodel"]["path"])
    check_bounds_agree(f"{saved_model} (its graph constants)", sig.graph_bounds(saved_model),
                       manifest)
    serve = _loaded(state).signatures[sig.DEFAULT_SIGNATURE]
    serve(**{sig.IMAGES_KEY: tf.zeros([1, bounds.max_side, 1, channels], tf.uint8)})
    try:
        serve(**{sig.IMAGES_KEY: tf.zeros([1, bounds.max_side + 1, 1, channels], tf.uint8)})
    except tf.errors.InvalidArgumentError:
        pass
    else:
        raise ValueError(f"the SavedModel accepts a side of {bounds.max_side + 1}; the manifest "
                         f"says {bounds.max_side}")
    files = [manifest["onnx"]["path"]] + [v["path"] for v in manifest["variants"].values()]
    for relative in files:
        path = inside(state["dir"], relative)
        stored = onnx.read_metadata(path)
        check_bounds_agree(f"{path} (its metadata)", stored.get("bounds"), manifest)
        if Preprocessing.from_dict(stored.get("preprocessing", {"size": 0})) != state["record"]:
            raise ValueError(f"{path}: its preprocessing record "
                             f"{json.dumps(stored.get('preprocessing'))} differs from the "
                             "manifest's")
    return (f"max side {bounds.max_side}, max batch {bounds.max_batch}, max pixels "
            f"{bounds.max_pixels}: the SavedModel's graphs and {len(files)} ONNX file(s) agree")


def _check_warmup(state):
    import tensorflow as tf

    from dnc_keras.export.build import read_warmup

    manifest = state["manifest"]
    requests = read_warmup(inside(state["dir"], manifest["savedmodel"]["path"]))
    if not requests:
        raise ValueError("the warm-up file holds no request")
    for request in requests:
        fn = _loaded(state).signatures[request.model_spec.signature_name or
                                       sig.DEFAULT_SIGNATURE]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = fn(**inputs)[sig.OUTPUT_KEY].numpy()
        if out.shape[1] != manifest["embedding"]["dim"]:
            raise ValueError(f"warm-up {request.model_spec.signature_name} returned {out.shape}")
    return f"{len(requests)} request(s) replayed: " + ", ".join(
        r.model_spec.signature_name for r in requests)


def _check_onnx(state):
    from dnc_keras.export import onnx

    path = inside(state["dir"], state["manifest"]["onnx"]["path"])
    onnx.check_onnx(path)
    state["onnx_path"] = path
    declared = onnx.session(path).get_inputs()[0]
    return f"{declared.name}: {declared.type} {declared.shape}"


def _source_sets(state, data):
    if "sets" not in state:
        from dnc_keras.datasets.sources import folder_sources, run_sources

        if data is not None:
            state["sets"] = [folder_sources(data)]
        else:
            config = state["manifest"].get("source_run", {}).get("config") or {}
            try:
                state["sets"] = run_sources(
                    config.get("dataset", "glyphs"), config.get("data_dir"),
                    config.get("train_classes", "standard"), config.get("seed", 0),
                    config.get("image_size")) if config else []
            except (ValueError, FileNotFoundError):
                state["sets"] = []
    return state["sets"]


def _parity_inputs(state, data):
    sets = _source_sets(state, data)
    if sets:
        sources, where = sets[0].sources, f"{len(sets[0].query_labels)} sources of {sets[0].name}"
    else:
        from dnc_keras.export.build import _synthetic_photos

        sources, where = _synthetic_photos(state["record"]), "synthetic photographs"
    state["inputs"] = parity.parity_inputs(sources, state["record"])
    state["model"] = _source_model(state["manifest"])
    return f"{len(state['inputs'])} inputs from {where}"


def _source_model(manifest):
    run_dir = manifest.get("source_run", {}).get("path")
    if not run_dir or not os.path.exists(os.path.join(run_dir, "model.keras")):
        return None
    from dnc_keras.export.build import load_run

    return load_run(run_dir).model


def _check_parity(state, tolerance):
    import tensorflow as tf

    from dnc_keras import preprocessing as pp
    from dnc_keras.export import onnx

    record, inputs = state["record"], state["inputs"]
    if state["model"] is not None:
        report = parity.check_parity(state["model"], record,
                                     inside(state["dir"], state["manifest"]["savedmodel"]["path"]),
                                     state["onnx_path"], inputs, tolerance)
        if not report["passed"]:
            raise ValueError(f"max |diff| {report['max_abs_diff']}; tolerance {tolerance}")
        return "against the source run's model: " + "; ".join(
            f"{k} {v:.1e}" for k, v in report["max_abs_diff"].items())
    # Without the source run: the SavedModel's two signatures and ONNX Runtime must agree.
    signatures = _loaded(state).signatures
    session = onnx.session(state["onnx_path"])
    worst = 0.0
    decode = pp.decode_function(record)
    for _, data in inputs:
        pixels = decode(tf.constant(data)).numpy()[None]
        by_pixels = signatures[sig.DEFAULT_SIGNATURE](
            **{sig.IMAGES_KEY: tf.constant(pixels)})[sig.OUTPUT_KEY].numpy()
        worst = max(worst, float(np.abs(onnx.run(session, pixels) - by_pixels).max()))
        if data.startswith((pp.PNG_MAGIC, pp.JPEG_MAGIC)):
            by_bytes = signatures[sig.BYTES_SIGNATURE](
                **{sig.BYTES_KEY: tf.constant([data])})[sig.OUTPUT_KEY].numpy()
            worst = max(worst, float(np.abs(by_bytes - by_pixels).max()))
    if worst > tolerance:
        raise ValueError(f"SavedModel and ONNX Runtime differ by {worst:.2e}; tolerance "
                         f"{tolerance}")
    return (f"source run not found: SavedModel (both signatures) and ONNX Runtime agree "
            f"within {worst:.1e} on {len(inputs)} inputs")


def _check_retrieval(state, data):
    from dnc_keras.export.build import _keras_metrics, _metrics, load_run
    from dnc_keras.export.loading import ExportedModel

    sets = _source_sets(state, data)
    if not sets:
        return "no test split to measure on (pass --data DIR)"
    manifest = state["manifest"]
    if data is not None:
        run_dir = manifest.get("source_run", {}).get("path")
        if not run_dir or not os.path.exists(os.path.join(run_dir, "model.keras")):
            raise ValueError("--data needs the source run's model to compare with; it is gone")
        reference = _keras_metrics(load_run(run_dir), sets)
    else:
        reference = manifest.get("metrics", {}).get("test", {})
    lines = []
    for runtime in ("savedmodel", "onnx"):
        metrics = _metrics(ExportedModel(state["dir"], runtime=runtime).embed_sources, sets)
        agreement = quality.compare(metrics, reference)
        if not agreement["agree"]:
            raise ValueError(f"{runtime}: {agreement['evaluations']}, tolerance "
                             f"{quality.AGREEMENT} MAP@R")
        gaps = ", ".join(f"{name} MAP@R {row['exported MAP@R']:.4f} vs run "
                         f"{row['run MAP@R']:.4f}" for name, row in
                         agreement["evaluations"].items())
        lines.append(f"{runtime}: {gaps}")
    return "; ".join(lines)


def _check_variant(state, mode):
    import tensorflow as tf

    from dnc_keras import preprocessing as pp
    from dnc_keras.export import onnx

    variant = state["manifest"]["variants"][mode]
    path = inside(state["dir"], variant["path"])
    onnx.check_onnx(path)
    decode = pp.decode_function(state["record"])
    pixels = decode(tf.constant(state["inputs"][0][1])).numpy()[None]
    out = onnx.run(onnx.session(path), pixels)
    reference = onnx.run(onnx.session(state["onnx_path"]), pixels)
    summary = f"max |diff| vs float32 {float(np.abs(out - reference).max()):.1e}"
    if "MAP@R" in variant:
        summary += f", MAP@R {variant['MAP@R_float32']:.4f} -> {variant['MAP@R']:.4f}"
    return summary


def format_report(checks):
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.passed else 'FAIL'} {c.name:{width}s}  {c.detail}"
                     for c in checks)
