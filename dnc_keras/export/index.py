"""EmbeddingIndex: a gallery embedded by an exported model, searchable, changeable, open-set.

An index is a folder:

- `index.json`, the commit point: the faiss kind (flat, ivf, hnsw) and its parameters, the
  export that made the vectors and its model hash, every item's id, label and path, the next
  id, the ids HNSW hides, the calibrated "unknown" threshold, and the name of the vectors file;
- `vectors-<token>.faiss`: the faiss index (`faiss_index`), searched by the items' ids.

A save writes a new vectors file under a temporary name and renames it, then index.json the
same way, and only then deletes older vectors files: a save interrupted at any point leaves an
index.json naming a vectors file that exists, so the previous index loads. `load` checks that
the two files agree (dimension, counts, ids). One process writes an index at a time.
The export is loaded through `ExportedModel`, so a query is refused by name when the
export has changed since (its artifacts' SHA-256, its bounds).
"""

import dataclasses
import datetime
import json
import math
import os
import uuid

import numpy as np

from dnc_keras.export import faiss_index, open_set
from dnc_keras.export.loading import ExportedModel
from dnc_keras.export.manifest import model_hash as export_model_hash

META_FILE = "index.json"
INDEX_FORMAT = "dnc_keras.index/2"
OLD_FORMATS = ("dnc_keras.index/1",)
VECTORS_PREFIX = "vectors-"
VECTORS_SUFFIX = ".faiss"
OLD_VECTORS_FILE = "index.faiss"  # dnc_keras.index/1
DEFAULT_TARGET_RECALL = 0.95
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass
class Neighbours:
    """Top-k results for n queries: arrays [n, k], nearest first.

    `distances` are euclidean distances between unit vectors (0 = identical, 2 = opposite).
    Where an approximate index found fewer than k items, the row ends with id -1, distance
    `inf` and label and path `None`. `unknown` [n] is True where the nearest item lies beyond
    `threshold` (`None`: no threshold, nothing is unknown).
    """

    distances: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    unknown: np.ndarray
    threshold: float | None = None

    @property
    def indices(self):
        """The items' ids (the name dnc_keras.index/1 used)."""
        return self.ids


class EmbeddingIndex:
    """Nearest-neighbour search over embeddings with a stable id, label and path per item.

    Args:
        embeddings: float32 [n, d] gallery embeddings (L2-normalised). They get ids 0..n-1.
        labels: n class labels (strings).
        paths: n source paths. Defaults to empty strings.
        export: `{"dir", "name", "version", "runtime", "model_hash"}` of the model that made
            the vectors. Defaults to `None` (queries must then come as embeddings, unchecked).
        kind: `"flat"` (exact), `"ivf"` or `"hnsw"` (approximate; see `faiss_index`).
            Defaults to `"flat"`.
        parameters: faiss parameters overriding `faiss_index.default_parameters` (`nlist`,
            `nprobe`; `M`, `efConstruction`, `efSearch`). Defaults to `None`.
        target_recall: recall@10 against exact search that `faiss_index.build_tuned` sets
            nprobe / efSearch for, when `parameters` does not give it. Defaults to `0.95`.

    Example:
    ```python
    index = EmbeddingIndex.from_folder("gallery/", "saved_models/glyphs", kind="hnsw")
    index.add_files(["new/a.png"], labels=["cat"])
    index.save("gallery.index")
    found = EmbeddingIndex.load("gallery.index").search_files(["query.png"], k=5)
    found.ids[0], found.labels[0], found.distances[0], found.unknown[0]
    ```
    """

    def __init__(self, embeddings, labels, paths=None, export=None, kind="flat",
                 parameters=None, target_recall=DEFAULT_TARGET_RECALL):
        vectors = _vectors(embeddings)
        labels, paths = _items(labels, paths, len(vectors))
        faiss_index.check_kind(kind)
        parameters = {**faiss_index.default_parameters(kind, len(vectors)), **(parameters or {})}
        faiss_index.check_parameters(kind, parameters, len(vectors))
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1]. Received: "
                             f"target_recall={target_recall}")
        ids = np.arange(len(vectors), dtype=np.int64)
        stored, tuning = faiss_index.build_tuned(kind, vectors, ids, parameters, target_recall)
        if tuning:
            parameters[tuning["parameter"]] = tuning["value"]
        self._restore(stored, kind, parameters, ids, labels, paths, export,
                      {"tuning": tuning, "trained_size": len(vectors), "next_id": len(vectors),
                       "created": _now()})

    def _restore(self, stored, kind, parameters, ids, labels, paths, export, state):
        self._index = stored
        self.kind = kind
        self.parameters = dict(parameters)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=object)
        self.paths = np.asarray(paths, dtype=object)
        self.export = export
        self.tuning = state.get("tuning")
        self.calibration = state.get("calibration")
        self.trained_size = int(state["trained_size"])
        self.created = state.get("created")
        self._next_id = int(state["next_id"])
        self._hidden = np.asarray(state.get("hidden_ids", []), dtype=np.int64)
        self._model = None
        self._saved = None  # (folder, vectors file) when the vectors on disk are current

    @property
    def dim(self):
        return self._index.d

    @property
    def model_hash(self):
        """Hash of the exported model that made the vectors (`manifest.model_hash`), or None."""
        return (self.export or {}).get("model_hash")

    @property
    def threshold(self):
        """The calibrated distance beyond which a query is unknown, or None."""
        return self.calibration["threshold"] if self.calibration else None

    def __len__(self):
        return len(self.ids)

    @classmethod
    def from_folder(cls, folder, export_dir, runtime="onnx", batch_size=64, kind="flat",
                    parameters=None, target_recall=DEFAULT_TARGET_RECALL):
        """Embeds every image under `folder` (one subfolder per class, named by its label).

        Args:
            folder: gallery root: `folder/<label>/<image>`.
            export_dir: an export folder (DIR/NAME) written by `dnc-keras export`.
            runtime: `"onnx"` or `"savedmodel"`, how the images are embedded. Defaults to
                `"onnx"`.
            kind, parameters, target_recall: as for the constructor.
        """
        paths, labels = list_gallery(folder)
        model = ExportedModel(export_dir, runtime=runtime)
        embeddings = model.embed_files(paths, batch_size=batch_size)
        export = {"dir": os.path.abspath(export_dir), "name": model.manifest["name"],
                  "version": model.version, "runtime": runtime,
                  "model_hash": export_model_hash(model.manifest)}
        index = cls(embeddings, labels, paths, export=export, kind=kind, parameters=parameters,
                    target_recall=target_recall)
        index._model = model
        return index

    # -- search ---------------------------------------------------------------------------
    def search(self, embeddings, k=5, model_hash=None, threshold=None):
        """Top-k gallery items of each query embedding ([n, d] or [d]).

        Args:
            embeddings: the queries, embedded by the index's model.
            k: items per query (at most the index's size). Defaults to `5`.
            model_hash: hash of the model that embedded the queries; refused if it is not
                the index's. Defaults to `None` (not checked).
            threshold: distance beyond which a query is unknown. Defaults to `None`: the
                calibrated threshold if there is one (`math.inf` turns it off).
        """
        self.check_model_hash(model_hash, "the model of the query embeddings")
        queries = _vectors(np.atleast_2d(embeddings), self.dim, what="query embeddings")
        if k < 1:
            raise ValueError(f"k must be >= 1. Received: k={k}")
        if not len(self):
            raise ValueError("the index holds no items")
        threshold = self.threshold if threshold is None else float(threshold)
        if threshold is not None and not threshold >= 0:
            raise ValueError(f"threshold must be a distance >= 0 (inf: never unknown). "
                             f"Received: threshold={threshold}")
        k = min(int(k), len(self))
        squared, ids = faiss_index.search(self._index, queries, k, self._hidden)
        found = ids >= 0
        rows = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
        if not np.array_equal(self.ids[rows][found], ids[found]):
            raise RuntimeError("the faiss index returned ids its item list does not hold")
        distances = np.where(found, np.sqrt(np.maximum(squared, 0.0)), np.inf)
        unknown = (distances[:, 0] > threshold if threshold is not None
                   else np.zeros(len(queries), bool))
        return Neighbours(distances=distances, ids=ids,
                          labels=np.where(found, self.labels[rows], None),
                          paths=np.where(found, self.paths[rows], None),
                          unknown=unknown, threshold=threshold)

    def search_files(self, paths, k=5, threshold=None):
        """Embeds image files with the index's model (refused if the export folder now holds
        another model), then `search`."""
        return self.search(self.model().embed_files(paths), k, threshold=threshold)

    def model(self):
        """The ExportedModel that made the gallery vectors (loaded and checked on first use)."""
        if self._model is None:
            if not self.export:
                raise ValueError("This index records no exported model; pass embeddings "
                                 "to search() instead of files")
            model = ExportedModel(self.export["dir"], runtime=self.export["runtime"],
                                  version=self.export["version"])
            self.check_model_hash(export_model_hash(model.manifest),
                                  f"the model now in {self.export['dir']}")
            if model.embedding_dim != self.dim:
                raise ValueError(f"{self.export['dir']} gives {model.embedding_dim}-d "
                                 f"embeddings; the index holds {self.dim}-d vectors")
            self._model = model
        return self._model

    def check_model_hash(self, other, source):
        """Raises ValueError naming both hashes if `other` is given and is not the index's."""
        if other is None or self.model_hash is None or other == self.model_hash:
            return
        export = self.export or {}
        raise ValueError(f"{source} is model {other[:16]}, but this index holds vectors of "
                         f"model {self.model_hash[:16]} ({export.get('name')} version "
                         f"{export.get('version')}): embed with that model, or rebuild the "
                         "index with `dnc-keras build-index`")

    # -- changes --------------------------------------------------------------------------
    def add(self, embeddings, labels, paths=None, model_hash=None):
        """Adds items under new ids (never reused); returns their ids, int64 [n].

        An IVF index files them under the centroids it was trained with: rebuild it when the
        gallery has grown several-fold (`trained_size` records its size at training).
        """
        self.check_model_hash(model_hash, "the model of the embeddings to add")
        vectors = _vectors(embeddings, self.dim)
        labels, paths = _items(labels, paths, len(vectors))
        ids = np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        faiss_index.back_with_huge_pages(self._index, self.kind)
        self._next_id += len(vectors)
        self.ids = np.concatenate([self.ids, ids])
        self.labels = np.concatenate([self.labels, np.asarray(labels, dtype=object)])
        self.paths = np.concatenate([self.paths, np.asarray(paths, dtype=object)])
        self._saved = None
        return ids

    def add_files(self, paths, labels, batch_size=64):
        """Embeds image files with the index's model and adds them; returns their ids."""
        paths = [str(p) for p in paths]
        labels = [labels] * len(paths) if isinstance(labels, str) else labels
        return self.add(self.model().embed_files(paths, batch_size=batch_size), labels, paths)

    def remove(self, ids):
        """Removes items by id; returns how many. Flat and IVF delete the vectors; HNSW hides
        them from search until `compact`.

        Raises:
            ValueError: an id the index does not hold (nothing is removed then).
        """
        ids = np.unique(_ids(ids))
        missing = ids[~np.isin(ids, self.ids)]
        if len(missing):
            raise ValueError(f"ids not in the index: {shorten(missing.tolist())}")
        if not faiss_index.remove(self._index, self.kind, ids):
            self._hidden = np.union1d(self._hidden, ids)
        keep = ~np.isin(self.ids, ids)
        self.ids, self.labels, self.paths = self.ids[keep], self.labels[keep], self.paths[keep]
        self._saved = None
        return len(ids)

    def ids_of_paths(self, paths):
        """The ids of the items stored under these paths (as given, or the same absolute path).

        Raises:
            ValueError: a path no item has.
        """
        where = self._ids_by_path()
        missing = [p for p in paths if p not in where and os.path.abspath(p) not in where]
        if missing:
            raise ValueError(f"no item of the index has the path(s) {shorten(missing)}")
        found = {i for p in paths for i in where.get(p) or where[os.path.abspath(p)]}
        return np.asarray(sorted(found), dtype=np.int64)

    def held_paths(self, paths):
        """Those of `paths` some item is already stored under (as given, or the same absolute
        path): adding them again would store the image twice, under new ids."""
        where = self._ids_by_path()
        return [p for p in paths if p in where or os.path.abspath(p) in where]

    def _ids_by_path(self):
        where = {}
        for i, stored in zip(self.ids.tolist(), self.paths.tolist()):
            where.setdefault(stored, []).append(i)
            where.setdefault(os.path.abspath(stored), []).append(i)
        return where

    @property
    def hidden(self):
        """Ids removed from an HNSW index but still in its graph (until `compact`)."""
        return self._hidden.copy()

    def compact(self):
        """Rebuilds an HNSW graph without its removed items, from the stored vectors (nothing
        is re-embedded); returns how many it dropped. A no-op for flat and IVF."""
        dropped = len(self._hidden)
        if dropped:
            self._index = faiss_index.rebuild(self._index, self.kind, self.parameters,
                                              self._hidden)
            self._hidden = np.zeros(0, np.int64)
            self._saved = None
        return dropped

    # -- open set -------------------------------------------------------------------------
    def calibrate(self, embeddings, labels, precision=0.95):
        """Chooses and stores the distance threshold beyond which queries are unknown: the
        largest at which precision >= `precision` on these queries (`open_set`).

        Args:
            embeddings: [n, d] validation queries, none of them gallery items; some of classes
                the gallery holds, some (best) of classes it does not.
            labels: their n classes.
            precision: the target precision. Defaults to `0.95`.

        Returns:
            the calibration record (`threshold` and the figures on these queries).
        """
        threshold, figures = open_set.choose_threshold(
            *self._outcomes(embeddings, labels), precision)
        self.calibration = {"threshold": threshold, "target_precision": float(precision),
                            "calibrated_on": figures, "gallery_size": len(self),
                            "date": _now()}
        return self.calibration

    def open_set_metrics(self, embeddings, labels, threshold=None):
        """Precision, recall, unknown rejection rate and accuracy at `threshold` (default: the
        calibrated one) on queries with known classes (`open_set.metrics_at`)."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("this index has no threshold: run `dnc-keras calibrate` first")
        return open_set.metrics_at(threshold, *self._outcomes(embeddings, labels))

    def calibrate_files(self, paths, labels, precision=0.95):
        """`calibrate` on image files embedded by the index's model (none a gallery item)."""
        self._refuse_gallery_items(paths)
        return self.calibrate(self.model().embed_files(paths), labels, precision)

    def open_set_metrics_files(self, paths, labels, threshold=None):
        """`open_set_metrics` on image files embedded by the index's model."""
        self._refuse_gallery_items(paths)
        return self.open_set_metrics(self.model().embed_files(paths), labels, threshold)

    def _outcomes(self, embeddings, labels):
        """(nearest distances, correct, known) of labelled queries, without a threshold."""
        found = self.search(embeddings, k=1, threshold=math.inf)
        labels = [str(label) for label in labels]
        if len(labels) != len(found.ids):
            raise ValueError(f"need one label per query. Received {len(found.ids)} queries and "
                             f"{len(labels)} labels")
        correct, known = open_set.outcomes(found.labels[:, 0], labels, set(self.labels))
        return found.distances[:, 0], correct, known

    def _refuse_gallery_items(self, paths):
        """A gallery item queried finds itself at distance 0 and flatters any threshold."""
        stored = {os.path.realpath(p) for p in self.paths.tolist() if p}
        shared = [p for p in paths if os.path.realpath(p) in stored]
        if shared:
            raise ValueError(f"{len(shared)} of the query images are items of the index (e.g. "
                             f"{shared[0]}): use images the index does not hold")

    # -- files ----------------------------------------------------------------------------
    def save(self, folder):
        """Writes the index into `folder` atomically (see the module docstring); returns it."""
        os.makedirs(folder, exist_ok=True)
        folder_real = os.path.realpath(folder)
        if self._saved and self._saved[0] == folder_real and os.path.exists(
                os.path.join(folder, self._saved[1])):
            vectors = self._saved[1]  # unchanged since written there: only index.json changes
        else:
            import faiss

            vectors = f"{VECTORS_PREFIX}{uuid.uuid4().hex[:12]}{VECTORS_SUFFIX}"
            _write_atomic(os.path.join(folder, vectors),
                          lambda path: faiss.write_index(self._index, path))
        meta = self._meta(vectors)
        _write_atomic(os.path.join(folder, META_FILE), lambda path: _dump_json(meta, path))
        _remove_stale(folder, keep=vectors)
        self._saved = (folder_real, vectors)
        return folder

    def describe(self):
        """The index's record without its items: kind, parameters, tuning, size, export,
        calibration."""
        return {"format": INDEX_FORMAT, "kind": self.kind, "parameters": self.parameters,
                "tuning": self.tuning, "dim": self.dim, "size": len(self),
                "classes": len(set(self.labels.tolist())), "metric": "euclidean",
                "export": self.export, "next_id": self._next_id,
                "trained_size": self.trained_size, "calibration": self.calibration,
                "created": self.created}

    def _meta(self, vectors):
        return {**self.describe(), "vectors": vectors, "hidden_ids": self._hidden.tolist(),
                "saved": _now(),
                "items": {"ids": self.ids.tolist(), "labels": self.labels.tolist(),
                          "paths": self.paths.tolist()}}

    @classmethod
    def load(cls, folder):
        """Reads an index folder written by `save`, after checking its files agree.

        Raises:
            FileNotFoundError: no index.json, or the vectors file it names is missing.
            ValueError: another format, a malformed field, or files that disagree.
        """
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: is {folder} an index written by "
                                    "`dnc-keras build-index`?")
        meta = _read_json(meta_path)
        if meta.get("format") in OLD_FORMATS:
            raise ValueError(f"{folder} is a {meta['format']} index (no ids, no model hash): "
                             "rebuild it with `dnc-keras build-index`")
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{meta_path}: expected format {INDEX_FORMAT!r}. Received: "
                             f"{meta.get('format')!r}")
        try:
            kind, vectors = meta["kind"], meta["vectors"]
            faiss_index.check_kind(kind)
            items = meta["items"]
            ids, labels, paths = _ids(items["ids"]), items["labels"], items["paths"]
            state = {key: meta[key] for key in ("tuning", "calibration", "trained_size",
                                                "next_id", "hidden_ids", "created")}
            hidden = _ids(state["hidden_ids"])
            parameters = dict(meta["parameters"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{meta_path}: malformed ({type(error).__name__}: {error})") from None
        if not isinstance(vectors, str) or os.path.basename(vectors) != vectors or \
                not vectors.endswith(VECTORS_SUFFIX):
            raise ValueError(f"{meta_path}: 'vectors' must name a .faiss file in {folder}. "
                             f"Received: {vectors!r}")
        stored = _read_faiss(os.path.join(folder, vectors), meta_path)
        _check_agreement(folder, vectors, stored, kind, meta.get("dim"), ids, labels, paths,
                         hidden, state["next_id"])
        faiss_index.back_with_huge_pages(stored, kind)
        index = cls.__new__(cls)
        index._restore(stored, kind, parameters, ids, labels, paths, meta.get("export"), state)
        index._saved = (os.path.realpath(folder), vectors)
        return index


def _check_agreement(folder, vectors, stored, kind, dim, ids, labels, paths, hidden, next_id):
    """Raises ValueError unless the vectors file and index.json describe the same items."""
    where = f"{folder}: {vectors} and {META_FILE}"
    if stored.d != dim:
        raise ValueError(f"{where} disagree: {stored.d}-d vectors, {dim}-d in {META_FILE}")
    if not len(ids) == len(labels) == len(paths):
        raise ValueError(f"{folder}/{META_FILE}: {len(ids)} ids, {len(labels)} labels and "
                         f"{len(paths)} paths; expected one of each per item")
    if len(hidden) and kind != "hnsw":
        raise ValueError(f"{folder}/{META_FILE}: hidden ids in a {kind} index")
    if np.any(np.diff(ids) <= 0) or np.isin(hidden, ids).any():
        raise ValueError(f"{folder}/{META_FILE}: item ids must be unique, ascending and not "
                         "hidden")
    if stored.ntotal != len(ids) + len(hidden):
        raise ValueError(f"{where} disagree: {stored.ntotal} vectors, {len(ids)} items and "
                         f"{len(hidden)} hidden ids")
    expected = np.sort(np.concatenate([ids, hidden]))
    held = np.sort(faiss_index.stored_ids(stored, kind))
    if not np.array_equal(held, expected):
        differ = np.setxor1d(held, expected)
        raise ValueError(f"{where} disagree on the ids, e.g. {shorten(differ.tolist())}")
    if len(expected) and int(next_id) <= int(expected[-1]):
        raise ValueError(f"{folder}/{META_FILE}: next_id {next_id} is not above the largest "
                         f"id {int(expected[-1])}")


def _read_json(path):
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def _read_faiss(path, named_by):
    import faiss

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found ({named_by} names it)")
    try:
        return faiss.read_index(path)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise ValueError(f"{path} is not a readable faiss index ({reason})") from None


def _write_atomic(path, write):
    """Calls `write(temporary path)`, flushes it to disk and renames it to `path`: readers
    see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_folder(os.path.dirname(path) or ".")


def _fsync_folder(folder):
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is still atomic
    finally:
        os.close(descriptor)


def _dump_json(value, path):
    with open(path, "w") as f:
        json.dump(value, f)


def _remove_stale(folder, keep):
    """Deletes vectors files other than `keep` (older saves, dnc_keras.index/1's) and
    temporary files of interrupted saves."""
    for name in os.listdir(folder):
        stale_vectors = (name.startswith(VECTORS_PREFIX) and name.endswith(VECTORS_SUFFIX)
                         and name != keep) or name == OLD_VECTORS_FILE
        interrupted = ".tmp-" in name and name.startswith((VECTORS_PREFIX, META_FILE))
        if stale_vectors or interrupted:
            os.remove(os.path.join(folder, name))


def _vectors(embeddings, dim=None, what="embeddings"):
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0 or (dim is not None and vectors.shape[1] != dim):
        expected = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise ValueError(f"{what} must be a non-empty {expected} array. Received shape "
                         f"{vectors.shape}")
    return vectors


def _items(labels, paths, n):
    labels = [str(label) for label in labels]
    paths = [""] * len(labels) if paths is None else [str(p) for p in paths]
    if not len(labels) == len(paths) == n:
        raise ValueError(f"need one label and path per embedding. Received {n} embeddings, "
                         f"{len(labels)} labels, {len(paths)} paths")
    return labels, paths


def _ids(ids):
    """int64 [n] of a list or array of integer ids (order and repeats kept)."""
    values = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"ids must be integers. Received: {shorten(values.tolist())}")
    return values.astype(np.int64).reshape(-1) if values.size else np.zeros(0, np.int64)


def shorten(values, limit=10):
    """The first `limit` values, comma-separated, and how many there are in all if more: for
    one-line messages that name what they refuse."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def list_gallery(folder, role="Gallery folder"):
    """(paths, labels) of the images in `folder/<label>/`, sorted; raises if there are none.
    `role` names the folder in the error (e.g. "--test folder")."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{role} {folder} not found")
    paths, labels = [], []
    for label in sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, label)
        if not os.path.isdir(class_dir):
            continue
        for name in sorted(os.listdir(class_dir)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(class_dir, name))
                labels.append(label)
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders "
                         f"of {folder}; expected {folder}/<label>/<image>")
    return paths, labels
