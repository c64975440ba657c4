"""The class-per-folder layouts (a generic image folder, Omniglot) as paths, for the streaming
pipeline: the same classes and split as `load_folder` and `load_omniglot`, without loading the
pixels."""

from __future__ import annotations

from dnc_keras.datasets import folder as _folder
from dnc_keras.datasets import omniglot as _omniglot
from dnc_keras.datasets._base import (
    IMAGE_EXTENSIONS,
    MIN_IMAGES_PER_CLASS,
    list_images,
    sorted_half_split,
    subdirs,
)
from dnc_keras.datasets._paths import EvalSet, PathDataset, dataset_root, finish, make_split

RECALL_KS = (1, 2, 4, 8)


def _from_class_dirs(name, root, class_dirs, extensions, train_classes):
    files = {cls: list_images(folder, extensions) for cls, folder in class_dirs}
    small = [cls for cls, images in files.items() if len(images) < MIN_IMAGES_PER_CLASS]
    if small:
        raise ValueError(f"{name}: class {small[0]!r} has {len(files[small[0]])} image(s) with "
                         f"extension {'/'.join(extensions)}; metric learning needs at least "
                         f"{MIN_IMAGES_PER_CLASS} per class ({len(small)} such class(es))")
    train_names, test_names = sorted_half_split(files, "standard")

    def split(names):
        paths = [str(p) for n in names for p in files[n]]
        return make_split(paths, [n for n in names for _ in files[n]])

    splits = {"train": split(train_names), "test": split(test_names)}
    return finish(name, root, splits, (EvalSet("test", "test"),), RECALL_KS, train_classes,
                  {"standard": True})


def load_folder_paths(data_dir, train_classes="standard") -> PathDataset:
    """`<root>/<class>/<image>` as paths: sorted classes, the first half (rounded up) trains."""
    root = dataset_root(data_dir, "folder", _folder.LAYOUT)
    class_dirs = [(d.name, d) for d in subdirs(root)]
    if not class_dirs:
        raise FileNotFoundError(f"No class subfolder in '{root}'. Expected layout: "
                                f"{_folder.LAYOUT}")
    return _from_class_dirs("folder", root, class_dirs, IMAGE_EXTENSIONS, train_classes)


def load_omniglot_paths(data_dir, train_classes="standard") -> PathDataset:
    """Omniglot's `<root>/<alphabet>/<characterNN>/*.png` as paths, one class per character."""
    root = dataset_root(data_dir, "omniglot", _omniglot.LAYOUT)
    return _from_class_dirs("omniglot", root, _omniglot._class_dirs(root), (".png",),
                            train_classes)
