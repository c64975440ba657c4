"""Divide-and-conquer deep metric learning for Keras 3 (Sanakoyeu et al., CVPR 2019 / TPAMI 2021).

Importing the package registers every Keras-serializable class it defines (the model, the
subspace layer, the losses, the backbone layers), so a model saved by one process loads in
another with `keras.saving.load_model` after a bare `import dnc_keras`. The other public names
import lazily.
"""

import importlib

from dnc_keras import blas_kernels

__version__ = "0.1.0"

# Before anything loads faiss (whose bundled OpenBLAS reads it once): see blas_kernels.
blas_kernels.choose()

# Registration: these modules define Keras-serializable classes.
from dnc_keras import backbones, layers, losses, model  # noqa: E402, F401

_EXPORTS = {
    "DnCModel": "dnc_keras.model",
    "SubspaceMasks": "dnc_keras.layers",
    "Preprocessing": "dnc_keras.preprocessing",
    "ClusterBatchSampler": "dnc_keras.sampling",
    "DnCSchedule": "dnc_keras.schedule",
    "DnCScheduleCallback": "dnc_keras.callbacks",
    "RetrievalEvaluation": "dnc_keras.callbacks",
    "DivergenceGuard": "dnc_keras.callbacks",
    "dnc_callbacks": "dnc_keras.callbacks",
    "build_encoder": "dnc_keras.backbones",
    "retrieval_metrics": "dnc_keras.evaluation",
    "query_gallery_metrics": "dnc_keras.evaluation",
    "TrainConfig": "dnc_keras.training.config",
    "ArraySource": "dnc_keras.batches",
    "FileSource": "dnc_keras.batches",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dnc_keras' has no attribute {name!r}")
