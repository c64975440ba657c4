"""Stanford Online Products from Ebay_train.txt and Ebay_test.txt.

Each file starts with the header `image_id class_id super_class_id path`; paths are relative to
the dataset folder (e.g. `bicycle_final/111085122871_0.JPG`). Train: 11,318 classes, 59,551
images; test: 11,316 classes, 60,502 images (method.md, section 8).
"""

from __future__ import annotations

from dnc_keras.datasets._paths import (
    EvalSet,
    PathDataset,
    check_images_exist,
    check_standard,
    dataset_root,
    finish,
    make_split,
    parse_int,
    read_table,
    require_file,
)

LAYOUT = ("<root>/Ebay_train.txt and <root>/Ebay_test.txt (header 'image_id class_id "
          "super_class_id path', then one image per line, path relative to <root>)")
HEADER = ("image_id", "class_id", "super_class_id", "path")
PUBLISHED = {"train images": 59551, "train classes": 11318, "test images": 60502,
             "test classes": 11316}
RECALL_KS = (1, 10, 100, 1000)


def _read(root, filename, check_files):
    index = require_file(root / filename, "sop", LAYOUT)
    rows = read_table(index, 4, header=HEADER)
    paths = [str(root / row[3]) for row in rows]
    classes = [parse_int(row[1], index, "class_id") for row in rows]
    if check_files:
        check_images_exist(paths, "sop", filename)
    return make_split(paths, classes)


def load_sop(data_dir, train_classes="standard", check_files=True) -> PathDataset:
    """Stanford Online Products as image paths and labels.

    Args:
        data_dir: the `Stanford_Online_Products` folder.
        train_classes: `"standard"` (Ebay_train.txt trains, Ebay_test.txt tests) or `"all"`.
            Defaults to `"standard"`.
        check_files: check that every listed image exists. Defaults to `True`.

    Returns:
        PathDataset with splits `"train"` and `"test"`, leave-one-out R@1, 10, 100, 1000;
        class names are the class ids.

    Raises:
        FileNotFoundError: an index file or image is missing, named.
        ValueError: a malformed header or line, or a class in both files.
    """
    root = dataset_root(data_dir, "sop", LAYOUT)
    train = _read(root, "Ebay_train.txt", check_files)
    test = _read(root, "Ebay_test.txt", check_files)
    standard = check_standard("Stanford Online Products", {
        "train images": len(train), "train classes": train.num_classes,
        "test images": len(test), "test classes": test.num_classes}, PUBLISHED)
    return finish("sop", root, {"train": train, "test": test}, (EvalSet("test", "test"),),
                  RECALL_KS, train_classes, {"standard": standard})
