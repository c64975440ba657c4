"""The export: layout, signatures as saved_model_cli shows them, warm-up, manifest, parity with
the run's evaluation path, the retrieval check, versions and refusals."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dnc_keras import preprocessing as pp
from dnc_keras.export import build, parity, quality
from dnc_keras.export import signatures as sig


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
    assert manifest["bounds"] == sig.DEFAULT_BOUNDS.to_dict()
    with open(os.path.join(trained_run, "preprocessing.json")) as f:
        assert manifest["preprocessing"] == json.load(f)  # the run's record, as trained
    assert pp.Preprocessing.from_dict(manifest["preprocessing"]).kernel == "bilinear"
    assert manifest["model"]["learners"] == 2 and manifest["model"]["subspaces"] == "fixed"
    assert manifest["source_run"]["path"] == os.path.abspath(trained_run)
    assert manifest["source_run"]["config"]["dataset"] == "digits"
    assert manifest["metrics"]["test"]["MAP@R"] == metrics["test"]["MAP@R"]
    assert manifest["parity"]["passed"] and manifest["parity"]["inputs"] >= 24
    report = manifest["quality"]
    assert report["checked"] and "test split" in report["judged_on"]
    for runtime in ("savedmodel", "onnx"):
        row = report[runtime]["agreement"]["evaluations"]["test"]
        assert row["run MAP@R"] == metrics["test"]["MAP@R"] and row["gap"] <= quality.AGREEMENT
    assert set(manifest["artifacts"]) >= {"1/saved_model.pb", "digits.onnx",
                                          "digits.int8.onnx"}
    assert set(manifest["software"]) >= {"tensorflow", "keras", "tf2onnx", "onnxruntime"}
    with open(os.path.join(export_dir, "1", "assets.extra", "dnc_keras_manifest.json")) as f:
        assert json.load(f) == manifest  # the version folder carries its own description


def test_warmup_file_holds_one_request_per_signature(export_dir, servable):
    requests = build.read_warmup(os.path.join(export_dir, "1"))
    assert [r.model_spec.signature_name for r in requests] == [sig.DEFAULT_SIGNATURE,
                                                               sig.BYTES_SIGNATURE]
    assert all(r.model_spec.name == "digits" for r in requests)
    assert servable.warmup_replayed == 2  # the TF Serving peer replayed them at load


def test_savedmodel_matches_keras_at_three_batch_sizes(export_dir, keras_model, digits):
    images = digits[0][:64]
    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures[sig.DEFAULT_SIGNATURE]
    reference = keras_model.embed(images.astype(np.float32) / 255.0)
    for batch in (images[:1], images[:7], images):
        out = serve(images=tf.constant(batch))["embeddings"].numpy()
        assert np.abs(out - reference[:len(batch)]).max() < 1e-5
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_other_sizes_go_through_the_records_antialiased_resize(export_dir, keras_model,
                                                                 digits):
    """105x105 and odd sizes: the graph computes the record's transform, which is not plain
    bilinear (that differs) - the bug this package once shipped."""
    from PIL import Image

    serve = tf.saved_model.load(os.path.join(export_dir, "1")).signatures[sig.DEFAULT_SIGNATURE]
    for size in ((105, 105), (37, 61)):
        images = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize(size, Image.BICUBIC))
                           for im in digits[0][:5]])[..., None]
        reference = keras_model.embed(pp.transform(images, keras_model.preprocessing).numpy())
        out = serve(images=tf.constant(images))["embeddings"].numpy()
        assert np.abs(out - reference).max() < 1e-5
        plain = keras_model.embed(tf.image.resize(images.astype(np.float32), (8, 8),
                                                  antialias=False).numpy() / 255.0)
        assert np.abs(out - plain).max() > 1e-2  # the plain bilinear shortcut is caught


def test_bytes_signature_decodes_like_the_training_pipeline(export_dir, digits, encode):
    images = digits[0][:6]
    loaded = tf.saved_model.load(os.path.join(export_dir, "1"))
    pixels = loaded.signatures[sig.DEFAULT_SIGNATURE](images=tf.constant(images))["embeddings"]
    files = tf.constant([encode(image) for image in images])
    from_png = loaded.signatures[sig.BYTES_SIGNATURE](image_bytes=files)["embeddings"]
    assert np.abs(from_png.numpy() - pixels.numpy()).max() < 1e-6
    jpeg = [encode(np.repeat(image, 3, axis=-1), "JPEG") for image in images]
    from_jpeg = loaded.signatures[sig.BYTES_SIGNATURE](image_bytes=tf.constant(jpeg))
    record = pp.Preprocessing(size=8, channels=1)
    decoded = np.stack([pp.decode(tf.constant(j), record).numpy() for j in jpeg])
    expected = loaded.signatures[sig.DEFAULT_SIGNATURE](images=tf.constant(decoded))
    assert np.abs(from_jpeg["embeddings"].numpy() - expected["embeddings"].numpy()).max() < 1e-6


def test_existing_version_is_not_overwritten(trained_run, export_root):
    with pytest.raises(ValueError, match="already exists"):
        build.export_run(trained_run, "digits", version=1, out=export_root)
    assert build.next_version(os.path.join(export_root, "digits")) == 2


def test_a_serving_graph_that_resizes_differently_is_refused(trained_run, tmp_path,
                                                              monkeypatch):
    """Parity catches a served transform that differs from training's on odd sizes: here the
    serving signatures resize with plain bilinear, as this package once did."""
    import types

    def plain_bilinear(images, record):
        x = tf.image.resize(tf.cast(images, tf.float32), record.size, antialias=False)
        return tf.clip_by_value(x, 0.0, 255.0) / 255.0

    serving_side = types.SimpleNamespace(**{**vars(pp), "transform": plain_bilinear})
    monkeypatch.setattr(sig, "pp", serving_side)
    with pytest.raises(build.ExportRefused, match="parity failed"):
        build.export_run(trained_run, "broken", out=str(tmp_path))
    assert os.listdir(tmp_path / "broken") == []


def test_an_export_whose_retrieval_differs_from_the_run_is_refused(trained_run, tmp_path,
                                                                    monkeypatch):
    real = build.evaluation_sets

    def drifted_run_metrics(run, data=None):
        sets, reference, where = real(run, data)
        return sets, {**reference, "MAP@R": reference["MAP@R"] + 0.02}, where

    monkeypatch.setattr(build, "evaluation_sets", drifted_run_metrics)
    with pytest.raises(build.ExportRefused, match="retrieval differs from the run"):
        build.export_run(trained_run, "drifted", out=str(tmp_path))
    assert os.listdir(tmp_path / "drifted") == []


def test_parity_inputs_are_real_sources_at_sizes_where_resizing_matters(trained_run):
    run = build.load_run(trained_run)
    sets, _, _ = build.evaluation_sets(run)
    inputs = parity.parity_inputs(sets[0].sources, run.preprocessing)
    sizes = {tuple(pp.decode(tf.constant(data), run.preprocessing).shape[:2])
             for _, data in inputs}
    assert (8, 8) in sizes and len(sizes) >= 4  # native, three odd rescales
    assert any(name.endswith("jpeg") for name, _ in inputs)
    assert any("rgba" in name for name, _ in inputs)


def test_bad_names_and_bounds_are_refused(trained_run, tmp_path):
    with pytest.raises(ValueError, match="name must be"):
        build.export_run(trained_run, "../up", out=str(tmp_path))
    with pytest.raises(ValueError, match="max_side"):
        build.export_run(trained_run, "small", out=str(tmp_path),
                         bounds=sig.Bounds(max_side=4))
    with pytest.raises(FileNotFoundError, match="run folder"):
        build.export_run(str(tmp_path / "nope"), "x", out=str(tmp_path))


def test_a_folder_given_with_data_is_judged_against_the_keras_model(trained_run, gallery,
                                                                    tmp_path):
    """For a run trained on every class: `--data DIR` measures retrieval on DIR with the run's
    Keras model and with the export, and compares them."""
    manifest = build.export_run(trained_run, "judged", out=str(tmp_path), data=gallery)
    report = manifest["quality"]
    assert report["checked"] and report["judged_on"] == f"folder {gallery}"
    for runtime in ("savedmodel", "onnx"):
        row = report[runtime]["agreement"]["evaluations"]["data"]
        assert row["gap"] <= quality.AGREEMENT
    assert report["run"]["data"]["MAP@R"] == pytest.approx(row["run MAP@R"])
