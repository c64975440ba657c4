"""Small in-memory datasets for metric learning, split into disjoint train and test classes.

`load(name, ...)` dispatches to `load_glyphs` (the default of the main job; rendered from fonts
matplotlib ships, needs no download), `load_digits` (scikit-learn's 8x8 digits), `load_omniglot`
(a folder in Omniglot's layout) and `load_folder` (one subfolder per class). Each returns a
`MetricDataset` of float32 images in [0, 1], shaped [N, H, W, C].
"""

from __future__ import annotations

import os

from dnc_keras.datasets._base import MetricDataset
from dnc_keras.datasets import folder as _folder
from dnc_keras.datasets import omniglot as _omniglot
from dnc_keras.datasets.digits import load_digits
from dnc_keras.datasets.folder import load_folder
from dnc_keras.datasets.glyphs import glyph_classes, load_glyphs
from dnc_keras.datasets.omniglot import load_omniglot

DATASET_NAMES = ("glyphs", "digits", "omniglot", "folder")
OMNIGLOT_ENV = "DNC_OMNIGLOT_DIR"

_LOADERS = {
    "glyphs": load_glyphs,
    "digits": load_digits,
    "omniglot": load_omniglot,
    "folder": load_folder,
}
_LAYOUTS = {"omniglot": _omniglot.LAYOUT, "folder": _folder.LAYOUT}


def load(
    name, data_dir=None, image_size=None, seed=0, train_classes="standard", **kwargs
) -> MetricDataset:
    """Load a dataset by name.

    Args:
        name: one of `DATASET_NAMES`: `"glyphs"`, `"digits"`, `"omniglot"`, `"folder"`.
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
        A `MetricDataset`.

    Example:
        >>> ds = load("digits")
        >>> ds.num_classes_train, ds.num_classes_test
        (5, 5)
    """
    key = str(name).strip().lower()
    if key not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(DATASET_NAMES)}")
    if key == "omniglot" and data_dir is None:
        data_dir = os.environ.get(OMNIGLOT_ENV) or None
    if key in _LAYOUTS and data_dir is None:
        where = f" or set {OMNIGLOT_ENV}" if key == "omniglot" else ""
        raise ValueError(
            f"Dataset {key!r} reads images from disk: pass data_dir{where}. "
            f"Expected layout: {_LAYOUTS[key]}"
        )
    if key not in _LAYOUTS and data_dir is not None:
        raise ValueError(
            f"Dataset {key!r} needs no data_dir (it is built in). Received: data_dir={data_dir!r}"
        )
    if image_size is not None:
        kwargs["image_size"] = image_size
    if key in _LAYOUTS:
        kwargs["data_dir"] = data_dir
    return _LOADERS[key](seed=seed, train_classes=train_classes, **kwargs)


__all__ = [
    "DATASET_NAMES",
    "MetricDataset",
    "glyph_classes",
    "load",
    "load_digits",
    "load_folder",
    "load_glyphs",
    "load_omniglot",
]
