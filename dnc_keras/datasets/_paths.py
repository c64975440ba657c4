"""The result type of the on-disk benchmarks: image paths and labels per split, never pixels.

The standard benchmarks hold 12k to 120k photographs: they stream from disk through
`dnc_keras.images` instead of being loaded into memory like the small datasets. A loader reads the
dataset's own index files, checks them line by line and returns a `PathDataset`: one `ImageSplit`
per split and the evaluation protocol of the dataset (which splits query which, and the K of
Recall@K), so that the main job evaluates every dataset as its papers do.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dnc_keras.datasets._base import MIN_IMAGES_PER_CLASS, check_train_classes

# Missing images are listed in the error up to this many, then counted.
_SHOWN = 5


class NonStandardDatasetWarning(UserWarning):
    """The dataset on disk differs from the published one (counts of images or classes):
    its numbers are not comparable with the papers'."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ImageSplit:
    """Image files and their integer labels: one split of an on-disk dataset.

    Args:
        paths: absolute image paths, a str array [N].
        labels: int32 array [N], values in 0..len(class_names)-1.
        class_names: the dataset's own class identifiers, indexed by label.
    """

    paths: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        paths = np.asarray(self.paths, dtype=object).reshape(-1)
        labels = np.asarray(self.labels).reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers. Received dtype {labels.dtype}")
        labels = labels.astype(np.int32)
        names = tuple(str(n) for n in self.class_names)
        if len(paths) != len(labels):
            raise ValueError(f"paths and labels must have the same length. Received: "
                             f"{len(paths)} paths and {len(labels)} labels")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique. Received: {list(names)[:10]}...")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"labels must lie in 0..{len(names) - 1} (one per class name). "
                             f"Received values in [{labels.min()}, {labels.max()}]")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", names)

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Classes with at least one image in this split."""
        return len(np.unique(self.labels))

    def subset(self, keep) -> "ImageSplit":
        """The images selected by `keep` (bool mask or indices), relabelled 0..C'-1 over the
        classes that still have an image, in the order of `class_names`."""
        keep = np.asarray(keep)
        index = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        labels = self.labels[index]
        used = np.unique(labels)
        remap = np.full(len(self.class_names), -1, np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        return ImageSplit(self.paths[index], remap[labels],
                          tuple(self.class_names[i] for i in used))

    def __repr__(self):
        return f"ImageSplit({len(self)} images, {self.num_classes} classes)"


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One evaluation of a dataset's protocol.

    `gallery=None` is leave-one-out retrieval within `query` (CUB, Cars, SOP, each VehicleID
    list); otherwise the queries search the gallery (In-shop), whose labels share the query's
    `class_names`.
    """

    name: str
    query: str
    gallery: str | None = None


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class PathDataset:
    """An on-disk metric-learning benchmark: image paths and labels per split, and its protocol.

    Args:
        name: the dataset's key, e.g. `"cub"`.
        root: the folder it was read from.
        splits: split name -> `ImageSplit`; `"train"` always, then `"test"`, or `"query"` and
            `"gallery"` (In-shop), or `"test_800"`, `"test_1600"`, `"test_2400"` (VehicleID).
        eval_sets: the evaluations of the protocol, each naming its splits.
        recall_ks: the K of Recall@K the papers report for this dataset.
        info: loader facts (source files, whether the counts match the published dataset).
    """

    name: str
    root: str
    splits: Mapping[str, ImageSplit]
    eval_sets: tuple[EvalSet, ...]
    recall_ks: tuple[int, ...]
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if "train" not in self.splits:
            raise ValueError(f"A PathDataset needs a 'train' split. Received: {list(self.splits)}")
        for ev in self.eval_sets:
            for split in (ev.query, ev.gallery):
                if split is not None and split not in self.splits:
                    raise ValueError(f"Evaluation {ev.name!r} names split {split!r}, which is "
                                     f"not one of {list(self.splits)}")
        train_names = set(self.train.class_names)
        for ev in self.eval_sets:
            shared = train_names & set(self.splits[ev.query].class_names)
            if shared:
                raise ValueError(f"Train and {ev.query} classes must be disjoint. Received "
                                 f"classes in both: {sorted(shared)[:10]}")

    @property
    def train(self) -> ImageSplit:
        return self.splits["train"]

    def __repr__(self):
        parts = ", ".join(f"{k}={len(v)} images / {v.num_classes} classes"
                          for k, v in self.splits.items())
        return f"PathDataset(name={self.name!r}, {parts})"


# -- helpers shared by the loaders ---------------------------------------------------------

def dataset_root(data_dir, name, layout) -> Path:
    """The dataset folder as a Path, or FileNotFoundError naming it and the expected layout."""
    if data_dir is None:
        raise ValueError(f"Dataset {name!r} reads images from disk: pass data_dir, the folder "
                         f"laid out as {layout}")
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder '{root}' does not exist or is not a directory. "
                                f"Expected layout of {name}: {layout}")
    return root


def require_file(path: Path, name, layout) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: missing file '{path}'. Expected layout: {layout}")
    return path


def read_table(path: Path, columns: int, skip: int = 0, header: Sequence[str] | None = None):
    """Rows of a whitespace-separated index file, each with exactly `columns` fields.

    Blank lines are ignored. Raises ValueError naming the file, the line number and the line
    when a row has another number of fields or the header differs from `header`.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if header is not None:
        got = lines[skip].split() if len(lines) > skip else []
        if [h.lower() for h in got] != [h.lower() for h in header]:
            raise ValueError(f"{path}: line {skip + 1} must be the header "
                             f"{' '.join(header)!r}. Received: {' '.join(got)!r}")
        skip += 1
    rows = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise ValueError(f"{path}: line {number} must have {columns} fields separated by "
                             f"spaces. Received: {line!r}")
        rows.append(fields)
    if not rows:
        raise ValueError(f"{path}: no entries (the file is empty)")
    return rows


def parse_int(value, path, what):
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: {what} must be an integer. Received: {value!r}") from None


def check_images_exist(paths: Sequence[str], name, what):
    """FileNotFoundError naming the first missing image files and their count."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise FileNotFoundError(f"{name}: {len(missing)} image file(s) listed in {what} are "
                                f"missing: {shown}{more}. Is data_dir the dataset's top folder?")


def make_split(paths, class_keys, names=None) -> ImageSplit:
    """An ImageSplit labelling images by the sorted order of their class keys.

    Args:
        paths: image paths [N].
        class_keys: per image, its class key (int or str) [N]; labels follow sorted keys.
        names: optional mapping key -> display name. Defaults to `str(key)`.
    """
    keys = np.asarray(class_keys)
    classes, labels = np.unique(keys, return_inverse=True)
    class_names = [str(names.get(k, k)) if names else str(k) for k in classes.tolist()]
    return ImageSplit(np.asarray(paths, dtype=object), labels.reshape(-1).astype(np.int32),
                      tuple(class_names))


def split_by_class_order(paths, class_keys, names=None):
    """(train, test): the first half of the sorted class keys trains, the rest tests.

    CUB-200-2011 (classes 1-100 / 101-200) and Cars196 (1-98 / 99-196) are split this way.
    """
    keys = np.asarray(class_keys)
    classes = np.unique(keys)
    n_train = (len(classes) + 1) // 2
    in_train = np.isin(keys, classes[:n_train])
    paths = np.asarray(paths, dtype=object)
    return (make_split(paths[in_train], keys[in_train], names),
            make_split(paths[~in_train], keys[~in_train], names))


def merge_for_deployment(splits: Mapping[str, ImageSplit]) -> ImageSplit:
    """Every image of every split in one training split (`train_classes="all"`), each file once;
    a class is its name, so In-shop's query and gallery images of one item join one class."""
    seen, paths, keys = set(), [], []
    for split in splits.values():
        for path, label in zip(split.paths, split.labels):
            if path not in seen:
                seen.add(path)
                paths.append(path)
                keys.append(split.class_names[label])
    return make_split(paths, keys)


def check_standard(name, counts: Mapping[str, int], expected: Mapping[str, int]) -> bool:
    """Warns (NonStandardDatasetWarning) when counts differ from the published ones."""
    diffs = [f"{k}: {counts[k]:,} (published {v:,})" for k, v in expected.items()
             if counts.get(k) != v]
    if diffs:
        warnings.warn(f"{name} on disk differs from the published dataset ({'; '.join(diffs)}): "
                      "results are not comparable with the papers'.", NonStandardDatasetWarning,
                      stacklevel=3)
    return not diffs


def finish(name, root, splits, eval_sets, recall_ks, train_classes, info) -> PathDataset:
    """Applies `train_classes` and checks that the training split can form metric batches."""
    if check_train_classes(train_classes) == "all":
        splits = {"train": merge_for_deployment(splits)}
        eval_sets = ()
    counts = np.bincount(splits["train"].labels, minlength=len(splits["train"].class_names))
    if (counts < MIN_IMAGES_PER_CLASS).all():
        raise ValueError(f"{name}: no training class has {MIN_IMAGES_PER_CLASS} images; metric "
                         "learning needs positive pairs")
    return PathDataset(name, str(root), dict(splits), tuple(eval_sets), tuple(recall_ks),
                       dict(info, train_classes=train_classes))
