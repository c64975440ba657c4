"""Search an index written by `dnc-keras build-index`, with its "unknown" threshold, from the
serving clients: needs faiss (faiss-cpu) and numpy, nothing of dnc_keras or TensorFlow.

    python serving/grpc_client.py --server localhost:8500 --model glyphs \\
        --manifest saved_models/glyphs/manifest.json --index glyphs_index query.png

An index folder holds `index.json` (every item's id, label and path, the ids an HNSW index
hides after removals, the threshold `dnc-keras calibrate` chose, the model hash of the export
that embedded the gallery) and the faiss file it names. A query's answer is its nearest item's
label if that item lies within the threshold, else "unknown" (`label` null, `unknown` true);
the k nearest matches are listed either way. Given the export's manifest.json, the index is
refused if another model embedded its gallery: its vectors and the served model's would not
be comparable.
"""

import hashlib
import json
import os

import numpy as np

INDEX_FORMAT = "dnc_keras.index/2"
META_FILE = "index.json"


class IndexFileError(ValueError):
    """An index folder that is missing, malformed, or made by another model."""


def model_hash(manifest):
    """The export's model hash, as dnc_keras.export.manifest.model_hash computes it (the tests
    compare the two): SHA-256 of the sorted (path, SHA-256) of its SavedModel and ONNX files."""
    version = str(manifest["version"])
    parts = sorted((k, v) for k, v in manifest.get("artifacts", {}).items()
                   if k.startswith(version + os.sep) or k == manifest["onnx"]["path"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class GalleryIndex:
    """A dnc_keras index folder, searched with faiss.

    Args:
        folder: the index folder (`dnc-keras build-index --out`).
        manifest_path: the served export's manifest.json; if given, the index must record
            the same model hash. Defaults to `None` (not checked).
    """

    def __init__(self, folder, manifest_path=None):
        meta = _read_meta(folder)
        try:
            items = meta["items"]
            self.ids = np.asarray(items["ids"], dtype=np.int64)
            self.labels = list(items["labels"])
            self.paths = list(items["paths"])
            self.hidden = np.asarray(meta["hidden_ids"], dtype=np.int64)
            self.threshold = (meta.get("calibration") or {}).get("threshold")
            self.model_hash = (meta.get("export") or {}).get("model_hash")
            vectors = os.path.join(folder, os.path.basename(meta["vectors"]))
        except (KeyError, TypeError, ValueError) as error:
            raise IndexFileError(f"{folder}/{META_FILE}: malformed ({error})") from None
        if not len(self.ids) == len(self.labels) == len(self.paths):
            raise IndexFileError(f"{folder}/{META_FILE}: {len(self.ids)} ids, "
                                 f"{len(self.labels)} labels, {len(self.paths)} paths")
        if manifest_path:
            self.check_model(manifest_path)
        self._index = _read_faiss(vectors)
        if self._index.ntotal != len(self.ids) + len(self.hidden):
            raise IndexFileError(f"{vectors} holds {self._index.ntotal} vectors; {META_FILE} "
                                 f"lists {len(self.ids)} items and {len(self.hidden)} hidden")
        self._row = {i: row for row, i in enumerate(self.ids.tolist())}

    def check_model(self, manifest_path):
        """Raises IndexFileError naming both hashes if the export is not the index's model."""
        try:
            with open(manifest_path) as f:
                served = model_hash(json.load(f))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise IndexFileError(f"{manifest_path}: not a dnc_keras export manifest "
                                 f"({error})") from None
        if self.model_hash and served != self.model_hash:
            raise IndexFileError(f"the served model {served[:16]} ({manifest_path}) is not the "
                                 f"model {self.model_hash[:16]} that embedded the index's "
                                 "gallery: rebuild the index with this export")

    def search(self, embeddings, k=5, threshold=None):
        """One result per query: {"label", "unknown", "threshold", "matches": [{"id", "label",
        "distance", "path"}]}, nearest first.

        Args:
            embeddings: float32 [n, d] queries from the index's model.
            k: matches per query. Defaults to `5`.
            threshold: distance beyond which a query is unknown. Defaults to `None`: the
                index's calibrated threshold, if any.
        """
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self._index.d:
            raise IndexFileError(f"query embeddings must be [n, {self._index.d}]; got shape "
                                 f"{list(queries.shape)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1. Received: k={k!r}")
        k = min(int(k), len(self.ids))
        params = None
        if len(self.hidden):  # removed from an HNSW graph but still in it
            keep_alive = faiss.IDSelectorBatch(self.hidden)
            params = faiss.SearchParameters(sel=faiss.IDSelectorNot(keep_alive))
        squared, ids = self._index.search(queries, k, params=params)
        threshold = self.threshold if threshold is None else threshold
        results = []
        for row_d, row_i in zip(squared, ids):
            matches = [{"id": int(i), "label": self.labels[self._row[int(i)]],
                        "distance": float(np.sqrt(max(d, 0.0))),
                        "path": self.paths[self._row[int(i)]]}
                       for d, i in zip(row_d, row_i) if i >= 0]
            nearest = matches[0]["distance"] if matches else float("inf")
            unknown = threshold is not None and nearest > threshold
            results.append({"label": None if unknown or not matches else matches[0]["label"],
                            "unknown": bool(unknown), "threshold": threshold,
                            "matches": matches})
        return results


def _read_meta(folder):
    path = os.path.join(folder, META_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except OSError as error:
        raise IndexFileError(f"{path}: cannot read ({error.strerror}); is {folder} an index "
                             "written by `dnc-keras build-index`?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFileError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise IndexFileError(f"{path}: expected format {INDEX_FORMAT!r}; got {found!r}")
    return meta


def _read_faiss(path):
    try:
        import faiss
    except ModuleNotFoundError:
        raise IndexFileError("searching an index needs faiss: pip install faiss-cpu") from None
    if not os.path.exists(path):
        raise IndexFileError(f"{path} not found")
    try:
        return faiss.read_index(path)
    except RuntimeError as error:
        raise IndexFileError(f"{path} is not a readable faiss index") from error


if __name__ == "__main__":
    # A module, not a command: say so, and where its search is run from.
    import sys

    if set(sys.argv[1:]) <= {"-h", "--help"}:
        print(__doc__.strip())
        sys.exit(0)
    print("gallery_search.py is a module and takes no arguments: search an index with "
          "grpc_client.py or rest_client.py --index INDEX (--help shows how)", file=sys.stderr)
    sys.exit(2)
