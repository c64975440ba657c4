"""The ONNX export: checker, declared contract, parity with Keras and the SavedModel, the edge
variants with their retrieval cost, and the TensorFlow-free edge script."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import tensorflow as tf

from dnc_keras.evaluation import retrieval_metrics
from dnc_keras.export import ExportedModel
from dnc_keras.export import onnx as onnx_export


@pytest.fixture(scope="module")
def session(export_dir):
    return onnx_export.session(os.path.join(export_dir, "digits.onnx"))


def test_checker_and_declared_contract(export_dir):
    path = os.path.join(export_dir, "digits.onnx")
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    (images,), (embeddings,) = model.graph.input, model.graph.output
    assert images.name == "images" and embeddings.name == "embeddings"
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height", "width", 1]
    assert embeddings.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {node.op_type for node in model.graph.node}
    # The record's antialiased resize is two matrix products inside the graph, not ONNX
    # Resize (which has no antialiasing in opset 17).
    assert "Resize" not in ops and "MatMul" in ops and "Sin" not in ops  # digits: bilinear
    assert onnx_export.read_metadata(path)["preprocessing"]["kernel"] == "bilinear"


def test_onnxruntime_matches_keras_on_real_images(session, keras_model, digits):
    images = digits[0][:64]
    reference = keras_model.embed(images.astype(np.float32) / 255.0)
    for batch in (images[:1], images[:64]):
        out = onnx_export.run(session, batch)
        assert np.abs(out - reference[:len(batch)]).max() < 1e-5


def test_onnxruntime_matches_keras_on_the_record_at_other_sizes(session, keras_model):
    """Odd sizes, where an antialiased resize differs from plain bilinear: ONNX Runtime runs
    the record's transform, as the Keras path (preprocessing.transform) computes it."""
    from dnc_keras.preprocessing import transform

    rng = np.random.default_rng(1)
    for shape in ((3, 105, 105, 1), (2, 64, 40, 1), (4, 5, 7, 1), (2, 13, 29, 1)):
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = keras_model.embed(transform(images, keras_model.preprocessing).numpy())
        assert np.abs(onnx_export.run(session, images) - expected).max() < 1e-5


def test_int8_variant_reports_its_retrieval_cost(manifest, export_dir, digits, serving_modules):
    variant = manifest["variants"]["int8"]
    assert variant["bytes"] < variant["float32_bytes"] / 2
    assert variant["MAP@R_images"] == len(digits[1])
    assert variant["MAP@R_float32"] - variant["MAP@R"] <= 0.01  # else export refuses
    # The reported figure is reproducible from the file, batch for batch (dynamic
    # quantization scales activations per batch): ExportedModel embeds 64 at a time.
    images, labels = digits
    small = ExportedModel(export_dir, runtime="onnx", onnx_file=variant["path"]).embed(images)
    assert retrieval_metrics(small, labels, nmi=False)["MAP@R"] == pytest.approx(
        variant["MAP@R"], abs=1e-6)
    # The edge script loads the variant as it loads the float32 file (checked against the
    # manifest's hash of it) and computes the same embeddings, batch for batch.
    edge = serving_modules["edge_infer"].EdgeModel(os.path.join(export_dir, variant["path"]))
    np.testing.assert_allclose(edge.embed(images[:64]), small[:64], rtol=0, atol=1e-6)


def test_float16_variant(export_dir, tmp_path, digits):
    src = os.path.join(export_dir, "digits.onnx")
    dst = str(tmp_path / "digits.float16.onnx")
    onnx_export.quantize(src, dst, "float16")
    images = digits[0][:32]
    full = onnx_export.run(onnx_export.session(src), images)
    half = onnx_export.run(onnx_export.session(dst), images)
    assert half.dtype == np.float32 and np.abs(half - full).max() < 5e-3
    with pytest.raises(ValueError, match="quantize must be one of"):
        onnx_export.quantize(src, dst, "int4")


def test_edge_script_runs_without_tensorflow(export_dir, gallery, session):
    """edge_infer.py in a fresh interpreter: same embeddings, and TensorFlow never imported."""
    files = sorted(os.path.join(gallery, "class0", f) for f in os.listdir(
        os.path.join(gallery, "class0")))[:3]
    script = os.path.join(os.path.dirname(__file__), "..", "..", "serving", "edge_infer.py")
    code = (
        "import runpy, sys, json\n"
        f"sys.argv = [{script!r}, {os.path.join(export_dir, 'digits.onnx')!r}] + {files!r}\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'tensorflow' not in sys.modules, 'edge_infer imported TensorFlow'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    from PIL import Image

    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == files
    images = np.stack([np.asarray(Image.open(f))[..., None] for f in files])
    expected = onnx_export.run(session, images)
    assert np.abs(np.asarray([line["embedding"] for line in lines]) - expected).max() < 1e-6


def test_execution_providers_prefer_cuda_where_offered(serving_modules):
    assert onnx_export.providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_export.providers(offered) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_export.providers([]) == ["CPUExecutionProvider"]
    edge = serving_modules["edge_infer"]
    assert edge.choose_providers(offered) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert edge.choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
