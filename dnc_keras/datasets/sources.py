"""What a run was evaluated on, as sources: the image files (or uint8 renderings) and labels of
each evaluation of the dataset's protocol, with no pixels decoded and no training code involved.

An export checks itself on these (`dnc_keras.export`): it embeds the very files the run's own
evaluation embedded, through the SavedModel and ONNX Runtime, and compares the metrics.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from dnc_keras.datasets._base import IMAGE_EXTENSIONS, list_images, subdirs


@dataclasses.dataclass
class SourceSet:
    """One retrieval evaluation over sources: `query` searches `gallery`, or itself leave-one-out
    when `gallery` is None. Sources are file paths (object array) or uint8 arrays [N, h, w, C].
    """

    name: str
    query: Any
    query_labels: np.ndarray
    gallery: Any = None
    gallery_labels: np.ndarray | None = None

    @property
    def sources(self):
        """Every source of the evaluation, queries first."""
        if self.gallery is None:
            return self.query
        if isinstance(self.query, np.ndarray) and self.query.dtype == np.uint8:
            return np.concatenate([self.query, self.gallery])
        return np.concatenate([np.asarray(self.query, object), np.asarray(self.gallery, object)])


def run_sources(dataset, data_dir=None, train_classes="standard", seed=0, image_size=None,
                split="test"):
    """The evaluations of a run's dataset as `SourceSet`s (empty when the split is empty).

    Args:
        dataset: the dataset name the run trained on.
        data_dir, train_classes, seed, image_size: the run's values (config.json).
        split: `"test"` (the protocol's evaluations) or `"train"` (leave-one-out on the
            training classes, for a run trained on every class). Defaults to `"test"`.
    """
    from dnc_keras import datasets

    name = datasets.canonical_name(dataset)
    if name in ("glyphs", "digits"):
        kwargs = {} if image_size is None else {"image_size": image_size}
        data = datasets.load(name, seed=seed, train_classes=train_classes, **kwargs)
        sources, labels = ((data.test_sources, data.y_test) if split == "test"
                           else (data.train_sources, data.y_train))
        return [SourceSet(split, sources, labels)] if len(labels) else []
    if name == "omniglot" and data_dir is None:
        data_dir = os.environ.get(datasets.OMNIGLOT_ENV) or None
    paths = datasets.load_paths(name, data_dir, train_classes=train_classes)
    if split == "train":
        return [SourceSet("train", paths.train.paths, paths.train.labels)]
    sets = []
    for ev in paths.eval_sets:
        query = paths.splits[ev.query]
        gallery = paths.splits[ev.gallery] if ev.gallery else None
        if len(query):
            sets.append(SourceSet(ev.name, query.paths, query.labels,
                                  None if gallery is None else gallery.paths,
                                  None if gallery is None else gallery.labels))
    return sets


def folder_sources(data_dir, name="data"):
    """Every image of `data_dir/<class>/` as one leave-one-out `SourceSet` (for `--data`)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Folder '{root}' does not exist or is not a directory; "
                                "expected <folder>/<class>/<image>")
    paths, labels = [], []
    for label, folder in enumerate(subdirs(root)):
        files = list_images(folder, IMAGE_EXTENSIONS)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders of "
                         f"'{root}'; expected <folder>/<class>/<image>")
    return SourceSet(name, np.asarray(paths, dtype=object), np.asarray(labels, np.int32))


def read_source(source):
    """Encoded bytes of a file source; None for an array source."""
    if isinstance(source, np.ndarray):
        return None
    with open(source, "rb") as f:
        return f.read()
