"""The deploy side: a trained model and its preprocessing record in, an export folder out.

- `build`: `export_run` / `export_model` write DIR/NAME (SavedModel for TF Serving, ONNX).
- `signatures`: the serving graph (`serving_default`, `serving_bytes`), bounds, batching.
- `onnx`: conversion, sessions, edge variants.
- `parity`: the one parity routine and tolerance; `quality`: retrieval against the run's.
- `manifest`: the one manifest schema; `loading`: `ExportedModel`; `validate`:
  `validate_export`.
- `index`: `EmbeddingIndex`, a gallery to search, add to and remove from, tied to its model;
  `faiss_index`: the flat, IVF and HNSW faiss indexes behind it; `open_set`: the "unknown"
  threshold and the precision and recall it is chosen by.

Nothing here imports the training job: an export needs a model, its record and its sources.
"""

from dnc_keras.export.build import ExportRefused, export_model, export_run, load_run
from dnc_keras.export.loading import ExportedModel
from dnc_keras.export.manifest import ManifestError, read_manifest
from dnc_keras.export.parity import PARITY_TOLERANCE
from dnc_keras.export.validate import validate_export

__all__ = ["ExportRefused", "ExportedModel", "ManifestError", "PARITY_TOLERANCE",
           "export_model", "export_run", "load_run", "read_manifest", "validate_export"]
