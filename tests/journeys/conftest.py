"""Journeys need the export extra (tf2onnx, onnxruntime, tensorflow-serving-api)."""

import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow_serving")
