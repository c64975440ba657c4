"""Omniglot from a folder: `<root>/<alphabet>/<characterNN>/*.png`, one class per character.

The layout is that of Brenden Lake's `images_background*` / `images_evaluation` archives; a
class is `<alphabet>/<characterNN>`. Classes are sorted by name, the first half (rounded up)
trains and the second half tests, so on the background "small 1" set (136 characters of 5
alphabets) the test characters come from alphabets the model never saw. The 105x105 drawings are
black on white; they are inverted so that strokes are bright on black, like the glyphs dataset.
The images are made by the run's `Preprocessing` record (grey, Lanczos to 28x28, inverted), which
the export carries, so a served model resizes raw 105x105 drawings exactly as training did.
"""

from __future__ import annotations

import numpy as np

from dnc_keras.datasets._base import (
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

LAYOUT = "<root>/<alphabet>/<characterNN>/*.png (e.g. Greek/character01/0394_01.png)"
_ROTATIONS = (0, 90, 180, 270)


def _class_dirs(root):
    alphabets = subdirs(root)
    if not alphabets:
        stray = list_images(root, (".png",))
        hint = " It holds PNG files directly: pass the folder two levels above." if stray else ""
        raise FileNotFoundError(
            f"No alphabet folder in '{root}'. Expected layout: {LAYOUT}.{hint}"
        )
    class_dirs = []
    for alphabet in alphabets:
        characters = subdirs(alphabet)
        if not characters:
            hint = ""
            if list_images(alphabet, (".png",)):
                hint = (
                    " It holds PNG files directly, like a character folder: data_dir must be the"
                    " folder that holds the alphabets."
                )
            raise ValueError(
                f"Alphabet folder '{alphabet}' has no character folder. "
                f"Expected layout: {LAYOUT}.{hint}"
            )
        class_dirs += [(f"{alphabet.name}/{c.name}", c) for c in characters]
    return class_dirs


def preprocessing(image_size=28, invert=True, color_mode="grayscale"):
    """Omniglot's record: Lanczos (Pillow's antialiased filter) to `image_size`, 8-bit passes
    as Pillow resized the drawings before the record existed (models trained then are served
    the pixels they learned from), inverted."""
    from dnc_keras.preprocessing import Preprocessing

    return Preprocessing(size=image_hw(image_size), channels=_channels(color_mode),
                         fit="stretch", kernel="lanczos", invert=bool(invert), rounding="uint8")


def _channels(color_mode):
    if color_mode not in ("grayscale", "rgb"):
        raise ValueError(f"color_mode must be 'grayscale' or 'rgb'. Received: {color_mode!r}")
    return 1 if color_mode == "grayscale" else 3


def load_omniglot(
    data_dir,
    image_size=28,
    seed=0,
    train_classes="standard",
    rotations=False,
    invert=True,
    on_error="raise",
    split="class",
    color_mode="grayscale",
) -> MetricDataset:
    """Omniglot characters read from `data_dir`.

    Args:
        data_dir: the root folder, laid out as `<root>/<alphabet>/<characterNN>/*.png`.
        image_size: int or (height, width); images are resized from 105x105 with an
            antialiased Lanczos filter (`dnc_keras.preprocessing`). Defaults to `28`.
        seed: unused, the split is by name; accepted so that every loader takes it.
            Defaults to `0`.
        train_classes: `"standard"` (sorted classes, first half trains, second half tests) or
            `"all"` (every class trains, test is empty). Defaults to `"standard"`.
        rotations: if `True`, each train class becomes four, rotated by 0, 90, 180 and 270
            degrees (named `<class>/rot090` etc.), as Vinyals et al. (2016) and Santoro et al.
            (2016) do; test classes are never rotated. Needs a square image_size.
            Defaults to `False`.
        invert: if `True`, strokes are bright (1) on a dark (0) background. Defaults to `True`.
        on_error: `"raise"` stops at the first unreadable PNG or a character folder with fewer
            than 2 images, naming it; `"skip"` leaves those out, warns with their count, and lists
            them in `info["skipped_files"]` and `info["dropped_classes"]`. Defaults to `"raise"`.

        split: `"class"` sorts the `alphabet/character` classes and cuts them in half, so one
            alphabet may straddle the cut; `"alphabet"` gives the first half of the sorted
            alphabets (rounded up) to train, so test characters all come from unseen alphabets.
            Ignored with `train_classes="all"`. Defaults to `"class"`.
        color_mode: `"grayscale"` (1 channel) or `"rgb"` (the grey replicated to 3).
            Defaults to `"grayscale"`.

    Returns:
        MetricDataset named `"omniglot"`, images [N, H, W, 1]; class names `alphabet/characterNN`.

    Raises:
        FileNotFoundError: `data_dir` is missing or has no alphabet folder.
        ValueError: bad layout, unreadable image or too small a class (with `on_error="raise"`).
    """
    del seed
    check_train_classes(train_classes)
    check_on_error(on_error)
    if split not in ("class", "alphabet"):
        raise ValueError(f"split must be 'class' or 'alphabet'. Received: split={split!r}")
    hw = image_hw(image_size)
    if rotations and hw[0] != hw[1]:
        raise ValueError(
            f"rotations=True needs a square image_size. Received: image_size={image_size!r}"
        )
    from dnc_keras.preprocessing import read_file

    record = preprocessing(hw, invert, color_mode)
    root = check_root(data_dir, LAYOUT)
    images_by_class, paths_by_class, info = load_class_folders(
        _class_dirs(root), (".png",), on_error, lambda path: read_file(path, record))
    if split == "alphabet" and train_classes == "standard":
        alphabets = {n.split("/")[0] for n in images_by_class}
        train_alphabets, _ = sorted_half_split(alphabets, "standard")
        train_names = sorted(n for n in images_by_class if n.split("/")[0] in train_alphabets)
        test_names = sorted(n for n in images_by_class if n.split("/")[0] not in train_alphabets)
    else:
        train_names, test_names = sorted_half_split(images_by_class, train_classes)
    if rotations:
        rotated = []
        for name in train_names:
            images = images_by_class.pop(name)
            paths_by_class.pop(name)
            for degrees in _ROTATIONS:
                new_name = f"{name}/rot{degrees:03d}"
                # np.rot90 turns counter-clockwise; exact, no resampling.
                images_by_class[new_name] = np.ascontiguousarray(
                    np.rot90(images, degrees // 90, axes=(1, 2))
                )
                rotated.append(new_name)
        train_names = rotated
    info = {
        "source": str(root),
        "split": split,
        "rotations": bool(rotations),
        "invert": bool(invert),
        **info,
    }
    return assemble("omniglot", images_by_class, train_names, test_names, info, record,
                    paths_by_class)
