"""Any image folder with one subfolder per class: `<root>/<class>/*.{png,jpg,jpeg,bmp,gif}`."""

from __future__ import annotations

from dnc_keras.datasets._base import (
    IMAGE_EXTENSIONS,
    MetricDataset,
    assemble,
    check_on_error,
    check_root,
    check_train_classes,
    image_hw,
    list_images,
    load_class_folders,
    sorted_half_split,
    subdirs,
)

LAYOUT = "<root>/<class>/<image>.{png,jpg,jpeg,bmp,gif}, one subfolder per class"
_COLOR_MODES = ("grayscale", "rgb")
_FITS = ("stretch", "crop", "pad")


def preprocessing(image_size=64, color_mode="rgb", fit="stretch", invert=False):
    """The folder loader's record: Lanczos to `image_size` by `fit`."""
    from dnc_keras.preprocessing import Preprocessing

    if color_mode not in _COLOR_MODES:
        raise ValueError(f"color_mode must be one of {_COLOR_MODES}. Received: {color_mode!r}")
    return Preprocessing(size=image_hw(image_size), channels=1 if color_mode == "grayscale"
                         else 3, fit=fit, kernel="lanczos", invert=bool(invert))


def load_folder(
    data_dir,
    image_size=64,
    seed=0,
    train_classes="standard",
    color_mode="rgb",
    fit="stretch",
    invert=False,
    on_error="raise",
) -> MetricDataset:
    """Images from class subfolders, resized and held in memory.

    Subfolders and files whose names start with a dot are ignored, so are files with other
    extensions. Classes are sorted by folder name; the first half (rounded up) trains, the rest
    tests.

    Args:
        data_dir: the root folder, one subfolder per class.
        image_size: int or (height, width). Defaults to `64`.
        seed: unused, the split is by name; accepted so that every loader takes it.
            Defaults to `0`.
        train_classes: `"standard"` (first half of the sorted classes trains, second half tests)
            or `"all"` (every class trains, test is empty). Defaults to `"standard"`.
        color_mode: `"rgb"` (3 channels) or `"grayscale"` (1). Transparency is composited over
            white. Defaults to `"rgb"`.
        fit: how a non-square image meets the target shape: `"stretch"` resizes, `"crop"`
            resizes the shorter side and cuts the centre, `"pad"` fits inside and pads with
            black (`dnc_keras.preprocessing.Preprocessing`). Defaults to `"stretch"`.
        invert: if `True`, returns 1 - image. Defaults to `False`.
        on_error: `"raise"` stops at the first unreadable image or a class with fewer than 2
            images, naming it; `"skip"` leaves those out, warns with their count, and lists them
            in `info["skipped_files"]` and `info["dropped_classes"]`. Defaults to `"raise"`.

    Returns:
        MetricDataset named `"folder"`, images [N, H, W, 3 or 1]; class names are folder names.

    Raises:
        FileNotFoundError: `data_dir` is missing or has no class subfolder.
        ValueError: unreadable image or too small a class (with `on_error="raise"`).
    """
    del seed
    check_train_classes(train_classes)
    check_on_error(on_error)
    from dnc_keras.preprocessing import read_file

    if fit not in _FITS:
        raise ValueError(f"fit must be one of {_FITS}. Received: fit={fit!r}")
    record = preprocessing(image_size, color_mode, fit, invert)
    root = check_root(data_dir, LAYOUT)
    class_dirs = [(d.name, d) for d in subdirs(root)]
    if not class_dirs:
        hint = ""
        if list_images(root, IMAGE_EXTENSIONS):
            hint = " It holds images directly: put each class in its own subfolder."
        raise FileNotFoundError(
            f"No class subfolder in '{root}'. Expected layout: {LAYOUT}.{hint}"
        )
    images_by_class, paths_by_class, info = load_class_folders(
        class_dirs, IMAGE_EXTENSIONS, on_error, lambda path: read_file(path, record))
    train_names, test_names = sorted_half_split(images_by_class, train_classes)
    info = {
        "source": str(root),
        "color_mode": color_mode,
        "fit": fit,
        "invert": bool(invert),
        **info,
    }
    return assemble("folder", images_by_class, train_names, test_names, info, record,
                    paths_by_class)
