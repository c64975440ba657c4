"""Small in-memory datasets for metric learning, split into disjoint train and test classes.

`load(name, ...)` dispatches to `load_glyphs` (the default of the main job; rendered from fonts
matplotlib ships, needs no download), `load_digits` (scikit-learn's 8x8 digits), `load_omniglot`
(a folder in Omniglot's layout) and `load_folder` (one subfolder per class). Each returns a
`MetricDataset` of float32 images in [0, 1], shaped [N, H, W, C].

The standard benchmarks stream from disk instead: `load_paths(name, data_dir)` (and `load` for
the names in `BENCHMARK_NAMES`) returns a `PathDataset` of image paths and labels per split,
with the dataset's evaluation protocol, for CUB-200-2011 (`"cub"`), Cars196 (`"cars"`), Stanford
Online Products (`"sop"`), In-shop Clothes (`"inshop"`) and PKU VehicleID (`"vehicleid"`); the
folder layouts (`"folder"`, `"omniglot"`) are available as paths too.
"""

from __future__ import annotations

import importlib
import os

from dnc_keras.datasets._base import MetricDataset
from dnc_keras.datasets._paths import (
    EvalSet,
    ImageSplit,
    NonStandardDatasetWarning,
    PathDataset,
)
from dnc_keras.datasets.cars import load_cars
from dnc_keras.datasets.cub import load_cub
from dnc_keras.datasets import folder as _folder
from dnc_keras.datasets import omniglot as _omniglot
from dnc_keras.datasets.digits import load_digits
from dnc_keras.datasets.folder import load_folder
from dnc_keras.datasets.folder_paths import load_folder_paths, load_omniglot_paths
from dnc_keras.datasets.glyphs import glyph_classes, load_glyphs
from dnc_keras.datasets.inshop import load_inshop
from dnc_keras.datasets.omniglot import load_omniglot
from dnc_keras.datasets.sop import load_sop
from dnc_keras.datasets.vehicleid import load_vehicleid
from dnc_keras_cli.options import DATASETS

# Every table of names derives from the registry (dnc_keras_cli.options.DATASETS).
DATASET_NAMES = tuple(name for name, (memory, _) in DATASETS.items() if memory)
BENCHMARK_NAMES = tuple(name for name, (memory, _) in DATASETS.items() if not memory)
PATH_DATASET_NAMES = BENCHMARK_NAMES + tuple(
    name for name, (memory, files) in DATASETS.items() if memory and files)
OMNIGLOT_ENV = "DNC_OMNIGLOT_DIR"
_LAYOUTS = {"omniglot": _omniglot.LAYOUT, "folder": _folder.LAYOUT}


def _loader(name, files):
    """The registry's loader of `name`: of its files (`files`) or in memory."""
    module, attribute = DATASETS[name][1 if files else 0].split(":")
    return getattr(importlib.import_module(module), attribute)


_ALIASES = {"cub200": "cub", "cub-200-2011": "cub", "cub_200_2011": "cub", "cars196": "cars",
            "stanford_online_products": "sop", "in-shop": "inshop", "vid": "vehicleid"}


def canonical_name(name) -> str:
    """The dataset key for a name or a common alias (`"cars196"` -> `"cars"`)."""
    key = str(name).strip().lower()
    return _ALIASES.get(key, key)


def is_built_in(name) -> bool:
    """True for the datasets that come with the package and take no data_dir (glyphs, digits)."""
    key = canonical_name(name)
    return key in DATASET_NAMES and key not in _LAYOUTS


def is_benchmark(name) -> bool:
    """True for the on-disk benchmarks, which `load` returns as a `PathDataset`."""
    return canonical_name(name) in BENCHMARK_NAMES


def load_paths(name, data_dir, train_classes="standard", **kwargs) -> PathDataset:
    """An on-disk dataset as image paths and labels per split, with its evaluation protocol.

    Args:
        name: one of `PATH_DATASET_NAMES` (`"cub"`, `"cars"`, `"sop"`, `"inshop"`,
            `"vehicleid"`, `"folder"`, `"omniglot"`) or an alias such as `"cars196"`.
        data_dir: the dataset's top folder, as its archive unpacks.
        train_classes: `"standard"` (the published split) or `"all"` (every image trains, for a
            model to deploy). Defaults to `"standard"`.
        **kwargs: passed on to the loader, e.g. `check_files=False` to skip checking that every
            listed image exists (benchmarks only).

    Returns:
        A `PathDataset`.

    Example:
        >>> ds = load_paths("cub", "/data/CUB_200_2011")  # doctest: +SKIP
        >>> len(ds.train), ds.train.num_classes, len(ds.splits["test"])
        (5864, 100, 5924)
    """
    key = canonical_name(name)
    if key not in PATH_DATASET_NAMES:
        raise ValueError(f"Unknown on-disk dataset {name!r}. Expected one of: "
                         f"{', '.join(PATH_DATASET_NAMES)}")
    return _loader(key, files=True)(data_dir, train_classes=train_classes, **kwargs)


def load(
    name, data_dir=None, image_size=None, seed=0, train_classes="standard", **kwargs
) -> MetricDataset | PathDataset:
    """Load a dataset by name.

    Args:
        name: one of `DATASET_NAMES`: `"glyphs"`, `"digits"`, `"omniglot"`, `"folder"`; or one
            of `BENCHMARK_NAMES`, which returns `load_paths(name, data_dir, train_classes)`.
        data_dir: the data folder, required by `"omniglot"` (which falls back on the
            `DNC_OMNIGLOT_DIR` environment variable) and `"folder"`; must be `None` for the
            others. Defaults to `None`.
        image_size: int or (height, width). Defaults to `None`: the loader's own default
            (glyphs 32, digits 8, omniglot 28, folder 64).
        seed: int; fixes the glyphs split and jitter, unused by the others. Defaults to `0`.
        train_classes: `"standard"` (the dataset's train/test class split) or `"all"` (every
            class trains, test is empty: for a model to deploy). Defaults to `"standard"`.
        **kwargs: passed on to the loader, e.g. `rotations=True` for omniglot.

    Returns:
        A `MetricDataset`; a `PathDataset` for the benchmarks (`image_size` and `seed` do not
        apply to them: `dnc_keras.images` sizes the images as it streams them).

    Example:
        >>> ds = load("digits")
        >>> ds.num_classes_train, ds.num_classes_test
        (5, 5)
    """
    key = canonical_name(name)
    if key in BENCHMARK_NAMES:
        return load_paths(key, data_dir, train_classes=train_classes, **kwargs)
    if key not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: "
                         f"{', '.join(DATASET_NAMES + BENCHMARK_NAMES)}")
    if key == "omniglot" and data_dir is None:
        data_dir = os.environ.get(OMNIGLOT_ENV) or None
    if key in _LAYOUTS and data_dir is None:
        where = f" or set {OMNIGLOT_ENV}" if key == "omniglot" else ""
        raise ValueError(
            f"Dataset {key!r} reads images from disk: pass data_dir{where}. "
            f"Expected layout: {_LAYOUTS[key]}"
        )
    if is_built_in(key) and data_dir is not None:
        raise ValueError(
            f"Dataset {key!r} needs no data_dir (it is built in). Received: data_dir={data_dir!r}"
        )
    if image_size is not None:
        kwargs["image_size"] = image_size
    if key in _LAYOUTS:
        kwargs["data_dir"] = data_dir
    return _loader(key, files=False)(seed=seed, train_classes=train_classes, **kwargs)


__all__ = [
    "BENCHMARK_NAMES",
    "DATASET_NAMES",
    "EvalSet",
    "ImageSplit",
    "MetricDataset",
    "NonStandardDatasetWarning",
    "PATH_DATASET_NAMES",
    "PathDataset",
    "canonical_name",
    "is_benchmark",
    "load_cars",
    "load_cub",
    "load_folder_paths",
    "load_inshop",
    "load_omniglot_paths",
    "load_paths",
    "load_sop",
    "load_vehicleid",
    "glyph_classes",
    "load",
    "load_digits",
    "load_folder",
    "load_glyphs",
    "load_omniglot",
]
