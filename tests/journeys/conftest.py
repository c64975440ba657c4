"""Journeys need the export extra (tf2onnx, onnxruntime, tensorflow-serving-api)."""

import needs
import pytest

for _name in ("tf2onnx", "onnxruntime", "tensorflow_serving"):
    needs.module(_name)
