"""Divide-and-conquer deep metric learning for Keras 3 (Sanakoyeu et al., CVPR 2019 / TPAMI 2021).

The public names below import lazily, so `dnc_keras.evaluation` and `dnc_keras.clustering`
(numpy, faiss, scikit-learn) stay usable without paying for TensorFlow's import.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DnCModel": "dnc_keras.model",
    "SubspaceMasks": "dnc_keras.layers",
    "ClusterBatchSampler": "dnc_keras.sampling",
    "ReclusterCallback": "dnc_keras.callbacks",
    "DivideCallback": "dnc_keras.callbacks",
    "ConquerCallback": "dnc_keras.callbacks",
    "RetrievalEvaluation": "dnc_keras.callbacks",
    "FiniteCheckpoint": "dnc_keras.callbacks",
    "dnc_callbacks": "dnc_keras.callbacks",
    "build_encoder": "dnc_keras.backbones",
    "retrieval_metrics": "dnc_keras.evaluation",
    "query_gallery_metrics": "dnc_keras.evaluation",
    "TrainConfig": "dnc_keras.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dnc_keras' has no attribute {name!r}")
