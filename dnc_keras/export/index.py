"""EmbeddingIndex: a faiss index of a gallery embedded with an exported model, for top-k search.

An index is a folder: `index.faiss` (exact L2 search over the L2-normalised embeddings) and
`index.json` (label and path of every item, and which export produced the vectors, so a query
is embedded by the same model). That export is loaded through `ExportedModel`, so a query is
refused by name when the export has changed since (its artifacts' SHA-256, its bounds).
"""

import dataclasses
import datetime
import json
import os

import numpy as np

from dnc_keras.export.loading import ExportedModel

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_FORMAT = "dnc_keras.index/1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass
class Neighbours:
    """Top-k results for n queries: arrays [n, k], nearest first.

    `distances` are euclidean distances between unit vectors (0 = identical, 2 = opposite).
    """

    distances: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    paths: np.ndarray


class EmbeddingIndex:
    """Exact nearest-neighbour search over embeddings with a label and path per item.

    Args:
        embeddings: float32 [n, d] gallery embeddings (L2-normalised).
        labels: n class labels (strings).
        paths: n source paths. Defaults to empty strings.
        export: `{"dir", "name", "version", "runtime"}` of the model that made the vectors.
            Defaults to `None` (queries must then come as embeddings).

    Example:
    ```python
    index = EmbeddingIndex.from_folder("gallery/", "saved_models/glyphs")
    index.save("gallery.index")
    found = EmbeddingIndex.load("gallery.index").search_files(["query.png"], k=5)
    found.labels[0], found.distances[0]
    ```
    """

    def __init__(self, embeddings, labels, paths=None, export=None):
        import faiss

        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise ValueError(f"embeddings must be a non-empty [n, d] array. Received shape "
                             f"{embeddings.shape}")
        labels = [str(label) for label in labels]
        paths = [""] * len(labels) if paths is None else [str(p) for p in paths]
        if not len(labels) == len(paths) == len(embeddings):
            raise ValueError(f"need one label and path per embedding. Received "
                             f"{len(embeddings)} embeddings, {len(labels)} labels, "
                             f"{len(paths)} paths")
        self.labels = np.asarray(labels, dtype=object)
        self.paths = np.asarray(paths, dtype=object)
        self.export = export
        self._index = faiss.IndexFlatL2(embeddings.shape[1])
        self._index.add(embeddings)
        self._model = None

    @property
    def dim(self):
        return self._index.d

    def __len__(self):
        return self._index.ntotal

    @classmethod
    def from_folder(cls, folder, export_dir, runtime="onnx", batch_size=64):
        """Embeds every image under `folder` (one subfolder per class, named by its label).

        Args:
            folder: gallery root: `folder/<label>/<image>`.
            export_dir: an export folder (DIR/NAME) written by `dnc-keras export`.
            runtime: `"onnx"` or `"savedmodel"`, how the images are embedded. Defaults to
                `"onnx"`.
        """
        paths, labels = list_gallery(folder)
        model = ExportedModel(export_dir, runtime=runtime)
        embeddings = model.embed_files(paths, batch_size=batch_size)
        export = {"dir": os.path.abspath(export_dir), "name": model.manifest["name"],
                  "version": model.version, "runtime": runtime}
        index = cls(embeddings, labels, paths, export=export)
        index._model = model
        return index

    def search(self, embeddings, k=5):
        """Top-k gallery items of each query embedding ([n, d] or [d])."""
        queries = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be [n, {self.dim}]. Received shape "
                             f"{queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1. Received: k={k}")
        k = min(int(k), len(self))
        squared, indices = self._index.search(queries, k)
        return Neighbours(distances=np.sqrt(np.maximum(squared, 0.0)), indices=indices,
                          labels=self.labels[indices], paths=self.paths[indices])

    def search_files(self, paths, k=5):
        """Embeds image files with the index's model, then `search`."""
        return self.search(self.model().embed_files(paths), k)

    def model(self):
        """The ExportedModel that made the gallery vectors (loaded on first use)."""
        if self._model is None:
            if not self.export:
                raise ValueError("This index records no exported model; pass embeddings "
                                 "to search() instead of files")
            self._model = ExportedModel(self.export["dir"], runtime=self.export["runtime"],
                                        version=self.export["version"])
            if self._model.embedding_dim != self.dim:
                raise ValueError(f"{self.export['dir']} gives {self._model.embedding_dim}-d "
                                 f"embeddings; the index holds {self.dim}-d vectors")
        return self._model

    def save(self, folder):
        """Writes `index.faiss` and `index.json` into `folder`, each atomically."""
        import faiss

        from dnc_keras.files import atomic_path, write_json

        os.makedirs(folder, exist_ok=True)
        with atomic_path(os.path.join(folder, INDEX_FILE)) as tmp:
            faiss.write_index(self._index, tmp)
        meta = {"format": INDEX_FORMAT, "dim": self.dim, "size": len(self),
                "metric": "euclidean", "export": self.export,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "labels": self.labels.tolist(), "paths": self.paths.tolist()}
        write_json(os.path.join(folder, META_FILE), meta, indent=None)
        return folder

    @classmethod
    def load(cls, folder):
        """Reads an index folder written by `save`; ValueError naming a damaged file."""
        import faiss

        paths = {name: os.path.join(folder, name) for name in (INDEX_FILE, META_FILE)}
        for path in paths.values():
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found: is {folder} an index written by "
                                        "`dnc-keras build-index`?")
        try:
            with open(paths[META_FILE], encoding="utf-8") as f:
                meta = json.load(f)
        except (ValueError, OSError) as error:
            raise ValueError(f"{paths[META_FILE]} is not a readable index record ({error})") \
                from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{paths[META_FILE]}: expected format {INDEX_FORMAT!r}. "
                             f"Received: {meta.get('format') if isinstance(meta, dict) else meta!r}")
        for key in ("labels", "paths"):
            if not isinstance(meta.get(key), list):
                raise ValueError(f"{paths[META_FILE]}: field {key!r} must be a list")
        try:
            stored = faiss.read_index(paths[INDEX_FILE])
        except RuntimeError as error:
            raise ValueError(f"{paths[INDEX_FILE]} is not a faiss index "
                             f"({str(error).strip().splitlines()[-1]})") from None
        if stored.ntotal != len(meta["labels"]) or len(meta["paths"]) != len(meta["labels"]):
            raise ValueError(f"{folder}: index holds {stored.ntotal} vectors but "
                             f"{len(meta['labels'])} labels and {len(meta['paths'])} paths")
        index = cls.__new__(cls)
        index._index = stored
        index.labels = np.asarray(meta["labels"], dtype=object)
        index.paths = np.asarray(meta["paths"], dtype=object)
        index.export = meta.get("export")
        index._model = None
        return index


def list_gallery(folder):
    """(paths, labels) of the images in `folder/<label>/`, sorted; raises if there are none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Gallery folder {folder} not found")
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
