"""The result type shared by every in-memory dataset, and the machinery to build one.

Metric learning is evaluated on classes the model never saw, so every loader returns a train split
and a test split whose classes are disjoint, each with labels 0..C-1 of its own.

Every loader builds its images with the run's `Preprocessing` record (`dnc_keras.preprocessing`)
from their sources, file paths or uint8 renderings at native size, and keeps both, so that an
exported model can be checked on the very files the run was evaluated on.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

TRAIN_CLASSES = ("standard", "all")
ON_ERROR = ("raise", "skip")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Metric learning needs a positive pair, so a class must have two images at least.
MIN_IMAGES_PER_CLASS = 2


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MetricDataset:
    """Images and labels of a metric-learning dataset, split by class.

    The train and test splits share no class. Each split numbers its own classes 0..C-1 in the
    order of its `class_names_*`. The images are float32 in [0, 1], shaped [N, H, W, C]: the
    `preprocessing` record applied to the sources. `train_classes="all"` puts every class in
    train and leaves test empty (shape [0, H, W, C]).

    Args:
        x_train: float32 array [N_train, H, W, C] in [0, 1].
        y_train: int32 array [N_train], labels 0..len(class_names_train)-1, each one used.
        x_test: float32 array [N_test, H, W, C] in [0, 1].
        y_test: int32 array [N_test], labels 0..len(class_names_test)-1, each one used.
        class_names_train: names of the train classes, indexed by label.
        class_names_test: names of the test classes, indexed by label.
        name: the dataset's name, e.g. `"glyphs"`.
        info: loader-specific facts (source, parameters, what was skipped).
        preprocessing: the `Preprocessing` record that made the images from their sources.
        train_sources: what each train image was made from: file paths (object array [N]) or
            uint8 renderings at native size [N, h, w, C]; `None` where there is no single
            source (Omniglot's rotated classes).
        test_sources: the same for the test images.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names_train: tuple[str, ...]
    class_names_test: tuple[str, ...]
    name: str
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preprocessing: Any = None
    train_sources: Any = None
    test_sources: Any = None

    def __post_init__(self):
        object.__setattr__(self, "class_names_train", tuple(self.class_names_train))
        object.__setattr__(self, "class_names_test", tuple(self.class_names_test))
        _check_split("train", self.x_train, self.y_train, self.class_names_train)
        _check_split("test", self.x_test, self.y_test, self.class_names_test)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                "x_train and x_test must have the same image shape. Received: "
                f"{self.x_train.shape[1:]} and {self.x_test.shape[1:]}"
            )
        for split, sources, x in (("train", self.train_sources, self.x_train),
                                  ("test", self.test_sources, self.x_test)):
            if sources is not None and len(sources) != len(x):
                raise ValueError(f"{split}_sources must hold one source per image. Received "
                                 f"{len(sources)} for {len(x)} images")
        shared = set(self.class_names_train) & set(self.class_names_test)
        if shared:
            raise ValueError(
                "Train and test classes must be disjoint. Received classes in both: "
                f"{sorted(shared)[:10]}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes_train(self) -> int:
        return len(self.class_names_train)

    @property
    def num_classes_test(self) -> int:
        return len(self.class_names_test)

    def __repr__(self):
        return (
            f"MetricDataset(name={self.name!r}, image_shape={self.image_shape}, "
            f"train={len(self.y_train)} images / {self.num_classes_train} classes, "
            f"test={len(self.y_test)} images / {self.num_classes_test} classes)"
        )


def _check_split(split, x, y, names):
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise ValueError(
            f"x_{split} must be a float32 array of shape [N, H, W, C]. Received: "
            f"{type(x).__name__} {getattr(x, 'dtype', None)} {getattr(x, 'shape', None)}"
        )
    if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.shape != (len(x),):
        raise ValueError(
            f"y_{split} must be an int32 array of shape [{len(x)}]. Received: "
            f"{type(y).__name__} {getattr(y, 'dtype', None)} {getattr(y, 'shape', None)}"
        )
    if len(x) and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            f"x_{split} must lie in [0, 1]. Received values in [{x.min()}, {x.max()}]"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names_{split} must be unique. Received: {list(names)[:10]}...")
    used = np.unique(y)
    if not np.array_equal(used, np.arange(len(names))):
        raise ValueError(
            f"y_{split} must use every label 0..{len(names) - 1} (one per class name). "
            f"Received labels {used[:10].tolist()}... for {len(names)} class names"
        )


def check_train_classes(train_classes: str) -> str:
    if train_classes not in TRAIN_CLASSES:
        raise ValueError(
            f"train_classes must be one of {TRAIN_CLASSES}. "
            f"Received: train_classes={train_classes!r}"
        )
    return train_classes


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    return on_error


def image_hw(image_size) -> tuple[int, int]:
    """(height, width) from an int or a pair of positive ints."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        hw = (0, 0)
    if min(hw) < 1:
        raise ValueError(
            "image_size must be a positive int or a (height, width) pair of positive ints. "
            f"Received: image_size={image_size!r}"
        )
    return hw


def sorted_half_split(names: Sequence[str], train_classes: str):
    """Split sorted class names: the first half (rounded up) trains, the rest tests."""
    names = sorted(names)
    if check_train_classes(train_classes) == "all":
        return names, []
    n_train = (len(names) + 1) // 2
    return names[:n_train], names[n_train:]


def assemble(name, images_by_class, train_names, test_names, info, preprocessing=None,
             sources_by_class=None) -> MetricDataset:
    """Stack per-class image arrays [n, H, W, C] into a MetricDataset, labelling by name order.

    `sources_by_class` maps a class to its images' sources (paths or uint8 arrays); a split
    gets sources only if each of its classes has them.
    """
    shape = next(iter(images_by_class.values())).shape[1:]
    sources_by_class = sources_by_class or {}

    def stack(names):
        if not names:
            return np.zeros((0, *shape), np.float32), np.zeros((0,), np.int32)
        xs = [images_by_class[n] for n in names]
        y = np.concatenate([np.full(len(x), i, np.int32) for i, x in enumerate(xs)])
        return np.concatenate(xs).astype(np.float32, copy=False), y

    def sources(names):
        if not names or not all(n in sources_by_class for n in names):
            return None
        parts = [sources_by_class[n] for n in names]
        if isinstance(parts[0], np.ndarray) and parts[0].dtype == np.uint8:
            return np.concatenate(parts)
        return np.asarray([str(p) for part in parts for p in part], dtype=object)

    x_train, y_train = stack(train_names)
    x_test, y_test = stack(test_names)
    return MetricDataset(x_train, y_train, x_test, y_test, train_names, test_names, name, info,
                         preprocessing, sources(train_names), sources(test_names))


def list_images(folder: Path, extensions) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file()
    )


def load_class_folders(class_dirs, extensions, on_error, read):
    """Read every class folder into {class name: float32 [n, H, W, C]} and the files read.

    Args:
        class_dirs: sequence of (class name, folder).
        extensions: lower-case suffixes that count as images.
        on_error: `"raise"` raises on the first unreadable file or unusable class, naming it;
            `"skip"` leaves it out, warns once with the count, and records it in the returned info.
        read: callable path -> float32 [H, W, C].

    Returns:
        (images_by_class, paths_by_class, info) with info holding `skipped_files` and
        `dropped_classes`.
    """
    images_by_class, paths_by_class, skipped_files, dropped_classes = {}, {}, [], []
    for name, folder in class_dirs:
        images, paths = [], []
        for path in list_images(folder, extensions):
            try:
                images.append(read(path))
                paths.append(str(path))
            except (OSError, ValueError, SyntaxError) as err:
                # PIL raises UnidentifiedImageError (an OSError) for garbage and OSError or
                # SyntaxError for truncated files.
                if on_error == "raise":
                    # The readers' own messages already name the file.
                    detail = str(err) if str(path) in str(err) else (
                        f"Cannot read image file '{path}': {err}")
                    raise ValueError(
                        f"{detail.rstrip('.')}. Fix or remove it (dnc-keras train "
                        "--skip-unreadable, or in Python the loaders' on_error='skip', leaves "
                        "unreadable files out)."
                    ) from err
                skipped_files.append(f"{path}: {err}")
        if len(images) < MIN_IMAGES_PER_CLASS:
            problem = (
                f"Class {name!r} ({folder}) has {len(images)} readable image(s) with extension "
                f"{'/'.join(extensions)}; metric learning needs at least {MIN_IMAGES_PER_CLASS} "
                "per class."
            )
            if not images and subdirs(folder):
                problem += " It holds subfolders: is data_dir one level too high?"
            if on_error == "raise":
                raise ValueError(
                    problem + " Add images or remove the folder (dnc-keras train "
                    "--skip-unreadable, or in Python the loaders' on_error='skip', leaves such "
                    "classes out)."
                )
            dropped_classes.append(problem)
            continue
        images_by_class[name] = np.stack(images)
        paths_by_class[name] = paths
    if skipped_files:
        warnings.warn(
            f"Skipped {len(skipped_files)} unreadable image file(s), first: {skipped_files[0]}",
            stacklevel=3,
        )
    if dropped_classes:
        warnings.warn(
            f"Dropped {len(dropped_classes)} class(es), first: {dropped_classes[0]}", stacklevel=3
        )
    if not images_by_class:
        raise ValueError("No usable class folder was found: " + "; ".join(dropped_classes[:3]))
    return images_by_class, paths_by_class, {
        "skipped_files": tuple(skipped_files),
        "dropped_classes": tuple(dropped_classes),
    }


def check_root(data_dir, layout: str) -> Path:
    if data_dir is None:
        raise ValueError(f"data_dir is required: the folder laid out as {layout}.")
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset folder '{root}' does not exist or is not a directory. "
            f"Expected layout: {layout}"
        )
    return root


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
