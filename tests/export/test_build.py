"""The SavedModel export: layout, signatures as saved_model_cli shows them, warm-up, manifest,
Keras parity, versions, and validate-export."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dnc_keras import export
from dnc_keras import serving_signatures as sig
from dnc_keras.export_validation import validate_export


def test_layout_is_tf_serving_versioned(export_dir, manifest):
    version = os.path.join(export_dir, "1")
    for path in ("saved_model.pb", "variables/variables.index",
                 "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/dnc_keras_manifest.json"):
        assert os.path.exists(os.path.join(version, path)), path
    assert os.path.exists(os.path.join(export_dir, "digits.onnx"))
    assert manifest["version"] == 1 and manifest["savedmodel"]["path"] == "1"
    assert not [d for d in os.listdir(export_dir) if d.startswith(".staging")]


def test_signature_defs_as_saved_model_cli_shows_them(export_dir):
    """saved_model_cli reads the MetaGraph's SignatureDefs; so does this test."""
    from tensorflow.python.tools import saved_model_utils

    meta_graph = saved_model_utils.get_meta_graph_def(os.path.join(export_dir, "1"), "serve")
    signatures = meta_graph.signature_def
    default = signatures[sig.DEFAULT_SIGNATURE]
    assert default.method_name == "tensorflow/serving/predict"
    images = default.inputs[sig.IMAGES_KEY]
    assert tf.dtypes.as_dtype(images.dtype) == tf.uint8
    assert [d.size for d in images.tensor_shape.dim] == [-1, -1, -1, 1]
    out = default.outputs[sig.OUTPUT_KEY]
    assert tf.dtypes.as_dtype(out.dtype) == tf.float32
    assert [d.size for d in out.tensor_shape.dim] == [-1, 16]
    encoded = signatures[sig.BYTES_SIGNATURE]
    assert tf.dtypes.as_dtype(encoded.inputs[sig.BYTES_KEY].dtype) == tf.string
    assert [d.size for d in encoded.inputs[sig.BYTES_KEY].tensor_shape.dim] == [-1]
    assert list(encoded.outputs) == [sig.OUTPUT_KEY]


def test_loaded_signatures_structured(export_dir):
    loaded = tf.saved_model.load(os.path.join(export_dir, "1"))
    default = loaded.signatures[sig.DEFAULT_SIGNATURE]
    assert default.structured_input_signature == (
        (), {"images": tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")})
    assert default.structured_outputs == {
        "embeddings": tf.TensorSpec([None, 16], tf.float32, name="embeddings")}
    encoded = loaded.signatures[sig.BYTES_SIGNATURE]
    assert encoded.structured_input_signature[1]["image_bytes"].dtype == tf.string


def test_manifest_describes_the_export(manifest, trained_run, export_dir):
    with open(os.path.join(trained_run, "metrics.json")) as f:
        metrics = json.load(f)
    assert manifest["name"] == "digits"
    embedding = manifest["embedding"]
    assert (embedding["dim"], embedding["distance"], embedding["normalisation"],
            embedding["dtype"]) == (16, "euclidean", "l2", "float32")
    contract = manifest["input"]
    assert contract["channels"] == 1 and contract["model_input_shape"] == [8, 8, 1]
    assert contract["max_side"] == sig.DEFAULT_MAX_SIDE
    pre = manifest["preprocessing"]
    assert "bilinear" in pre["resize"] and "antialias off" in pre["resize"]
    assert pre["invert"] is False and pre["inside_graph"] is True
    assert manifest["model"]["learners"] == 2 and manifest["model"]["subspaces"] == "fixed"
    assert manifest["source_run"]["path"] == os.path.abspath(trained_run)
    assert manifest["source_run"]["config"]["dataset"] == "digits"
    assert manifest["metrics"]["test"]["MAP@R"] == metrics["test"]["MAP@R"]
    assert manifest["parity"]["passed"]
    assert set(manifest["software"]) >= {"tensorflow", "keras", "tf2onnx", "onnxruntime"}
    with open(os.path.join(export_dir, "1", "assets.extra", "dnc_keras_manifest.json")) as f:
        assert json.load(f) == manifest  # the version folder carries its own description


def test_warmup_file_holds_one_request_per_signature(export_dir, servable):
    requests = export.read_warmup(os.path.join(export_dir, "1"))
    assert [r.model_spec.signature_name for r in requests] == [sig.DEFAULT_SIGNATURE,
                                                               sig.BYTES_SIGNATURE]
    assert all(r.model_spec.name == "digits" for r in requests)
    assert servable.warmup_replayed == 2  # the TF Serving peer replayed them at load


def test_savedmodel_matches_keras_at_two_batch_sizes(export_dir, keras_model, digits):
    images = digits[0][:64]
    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures[sig.DEFAULT_SIGNATURE]
    reference = keras_model.embed(images.astype(np.float32) / 255.0)
    for batch in (images[:1], images[:7], images):
        out = serve(images=tf.constant(batch))["embeddings"].numpy()
        assert np.abs(out - reference[:len(batch)]).max() < 1e-5
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_any_height_and_width_is_resized_inside(export_dir, keras_model, digits):
    images = digits[0][:5]
    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures[sig.DEFAULT_SIGNATURE]
    # Pixel-repeated images resize back exactly with plain bilinear (half-pixel centres).
    upscaled = np.repeat(np.repeat(images, 3, axis=1), 5, axis=2)
    reference = keras_model.embed(images.astype(np.float32) / 255.0)
    out = serve(images=tf.constant(upscaled))["embeddings"].numpy()
    assert np.abs(out - reference).max() < 1e-5
    odd = serve(images=tf.constant(np.zeros((2, 13, 29, 1), np.uint8) + 128))["embeddings"]
    assert odd.shape == (2, 16)


def test_bytes_signature_matches_pixels(export_dir, digits, encode):
    images = digits[0][:6]
    loaded = tf.saved_model.load(os.path.join(export_dir, "1"))
    pixels = loaded.signatures[sig.DEFAULT_SIGNATURE](images=tf.constant(images))["embeddings"]
    files = tf.constant([encode(image) for image in images])
    from_png = loaded.signatures[sig.BYTES_SIGNATURE](image_bytes=files)["embeddings"]
    assert np.abs(from_png.numpy() - pixels.numpy()).max() < 1e-6
    jpeg = tf.constant([encode(np.repeat(image, 3, axis=-1), "JPEG") for image in images])
    from_jpeg = loaded.signatures[sig.BYTES_SIGNATURE](image_bytes=jpeg)["embeddings"].numpy()
    np.testing.assert_allclose(np.linalg.norm(from_jpeg, axis=1), 1.0, atol=1e-5)


def test_colour_files_become_grey_like_pillow(encode):
    """The graph's RGB -> L conversion is Pillow's, so served files match the training data."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    decoded = sig.decode_image(tf.constant(encode(rgb)), channels=1, max_side=64)
    np.testing.assert_array_equal(decoded.numpy()[..., 0], grey)


def test_existing_version_is_not_overwritten(trained_run, export_root):
    with pytest.raises(ValueError, match="already exists"):
        export.export_run(trained_run, "digits", version=1, out=export_root)
    assert export.next_version(os.path.join(export_root, "digits")) == 2


def test_failed_parity_writes_nothing(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="parity failed"):
        export.export_run(trained_run, "broken", out=str(tmp_path))
    assert os.listdir(tmp_path / "broken") == []


def test_bad_names_and_bounds_are_refused(trained_run, tmp_path):
    with pytest.raises(ValueError, match="name must be"):
        export.export_run(trained_run, "../up", out=str(tmp_path))
    with pytest.raises(ValueError, match="max_side"):
        export.export_run(trained_run, "small", out=str(tmp_path), max_side=4)
    with pytest.raises(FileNotFoundError, match="run folder"):
        export.export_run(str(tmp_path / "nope"), "x", out=str(tmp_path))


def test_validate_export_passes(export_dir):
    checks = validate_export(export_dir)
    assert all(c.passed for c in checks), [vars(c) for c in checks if not c.passed]
    names = [c.name for c in checks]
    assert "parity savedmodel vs onnxruntime" in names and "variant int8" in names


def test_validate_export_reports_a_broken_onnx_file(export_dir, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(export_dir, copy)
    (copy / "digits.onnx").write_bytes(b"not an onnx model")
    checks = {c.name: c for c in validate_export(str(copy))}
    assert not checks["onnx checker"].passed
    assert checks["savedmodel signatures"].passed
