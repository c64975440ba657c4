"""Cars196 (Stanford Cars) from cars_annos.mat and car_ims/, full images (no bounding-box crop).

Metric learning ignores the annotation's `test` flag and splits by class: 1-98 train, 99-196
test, 16,185 images (method.md, section 8), as the TPAMI code's Cars loader does.
"""

from __future__ import annotations

import numpy as np

from dnc_keras.datasets._paths import (
    EvalSet,
    PathDataset,
    check_images_exist,
    check_standard,
    dataset_root,
    finish,
    require_file,
    split_by_class_order,
)

LAYOUT = ("<root>/cars_annos.mat (struct array 'annotations' with fields relative_im_path, "
          "bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test; cell 'class_names') and "
          "<root>/car_ims/*.jpg")
PUBLISHED = {"images": 16185, "classes": 196}
RECALL_KS = (1, 2, 4, 8)


def _field(record, name, mat):
    try:
        value = getattr(record, name)
    except AttributeError:
        raise ValueError(f"cars: {mat}: the annotations have no field {name!r}. Expected the "
                         f"struct layout: {LAYOUT}") from None
    return np.asarray(value).reshape(-1)


def read_annotations(mat):
    """(relative paths, class ids 1..196, class names by id) from cars_annos.mat."""
    import scipy.io

    try:
        contents = scipy.io.loadmat(str(mat), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises ValueError, TypeError or its own MatReadError
        raise ValueError(f"cars: cannot read '{mat}' as a MATLAB file: {err}") from err
    if "annotations" not in contents:
        raise ValueError(f"cars: {mat} has no 'annotations' variable. Found: "
                         f"{sorted(k for k in contents if not k.startswith('__'))}")
    records = np.atleast_1d(contents["annotations"])
    paths, classes = [], []
    for number, record in enumerate(records, start=1):
        rel = _field(record, "relative_im_path", mat)
        cls = _field(record, "class", mat)
        if rel.size != 1 or cls.size != 1 or not np.issubdtype(cls.dtype, np.number):
            raise ValueError(f"cars: {mat}: annotation {number} must have one "
                             f"relative_im_path and one numeric class. Received: "
                             f"{rel.tolist()!r}, {cls.tolist()!r}")
        paths.append(str(rel[0]))
        classes.append(int(cls[0]))
    names = {}
    if "class_names" in contents:
        names = {i + 1: str(n) for i, n in enumerate(np.atleast_1d(contents["class_names"]))}
    return paths, classes, names


def load_cars(data_dir, train_classes="standard", check_files=True) -> PathDataset:
    """Cars196 as image paths and labels.

    Args:
        data_dir: the folder holding `cars_annos.mat` and `car_ims/`.
        train_classes: `"standard"` (first half of the class ids trains: 1-98) or `"all"`.
            Defaults to `"standard"`.
        check_files: check that every listed image exists. Defaults to `True`.

    Returns:
        PathDataset with splits `"train"` and `"test"`, leave-one-out R@1, 2, 4, 8; class
        names from the .mat's `class_names` (e.g. `"AM General Hummer SUV 2000"`).

    Raises:
        FileNotFoundError: cars_annos.mat or an image is missing, named.
        ValueError: the .mat is unreadable or not in the published struct layout.
    """
    root = dataset_root(data_dir, "cars", LAYOUT)
    mat = require_file(root / "cars_annos.mat", "cars", LAYOUT)
    rel_paths, classes, names = read_annotations(mat)
    paths = [str(root / p) for p in rel_paths]
    if check_files:
        check_images_exist(paths, "cars", "cars_annos.mat")
    train, test = split_by_class_order(paths, classes, names)
    standard = check_standard("Cars196", {"images": len(paths), "classes": len(set(classes))},
                              PUBLISHED)
    return finish("cars", root, {"train": train, "test": test}, (EvalSet("test", "test"),),
                  RECALL_KS, train_classes, {"standard": standard, "index": str(mat)})
