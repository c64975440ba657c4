"""CUB-200-2011 from its original archive: images.txt, image_class_labels.txt, images/.

Metric learning splits by class (Wah et al.'s train_test_split.txt is for classification and is
ignored): classes 1-100 train, 101-200 test, 11,788 images (method.md, section 8).
"""

from __future__ import annotations

from dnc_keras.datasets._paths import (
    EvalSet,
    PathDataset,
    check_images_exist,
    check_standard,
    dataset_root,
    finish,
    parse_int,
    read_table,
    require_file,
    split_by_class_order,
)

LAYOUT = ("<root>/images.txt ('<image_id> <class_folder>/<file>.jpg' per line), "
          "<root>/image_class_labels.txt ('<image_id> <class_id>'), optional classes.txt "
          "('<class_id> <name>'), and the images under <root>/images/")
PUBLISHED = {"images": 11788, "classes": 200}
RECALL_KS = (1, 2, 4, 8)


def load_cub(data_dir, train_classes="standard", check_files=True) -> PathDataset:
    """CUB-200-2011 as image paths and labels.

    Args:
        data_dir: the `CUB_200_2011` folder of the archive.
        train_classes: `"standard"` (first half of the class ids trains: 1-100) or `"all"`
            (every image trains, no test split). Defaults to `"standard"`.
        check_files: check that every listed image exists. Defaults to `True`.

    Returns:
        PathDataset with splits `"train"` and `"test"`, leave-one-out R@1, 2, 4, 8; class names
        from classes.txt when present (e.g. `"001.Black_footed_Albatross"`).

    Raises:
        FileNotFoundError: a missing index file or image, named.
        ValueError: a malformed line (file and line number named) or inconsistent ids.
    """
    root = dataset_root(data_dir, "cub", LAYOUT)
    images_txt = require_file(root / "images.txt", "cub", LAYOUT)
    labels_txt = require_file(root / "image_class_labels.txt", "cub", LAYOUT)
    images = {parse_int(i, images_txt, "image_id"): rel
              for i, rel in read_table(images_txt, 2)}
    labels = {parse_int(i, labels_txt, "image_id"): parse_int(c, labels_txt, "class_id")
              for i, c in read_table(labels_txt, 2)}
    if images.keys() != labels.keys():
        only_images = sorted(images.keys() - labels.keys())[:5]
        only_labels = sorted(labels.keys() - images.keys())[:5]
        raise ValueError(f"cub: images.txt and image_class_labels.txt must list the same image "
                         f"ids. Only in images.txt: {only_images}; only in "
                         f"image_class_labels.txt: {only_labels}")
    names = {}
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        names = {parse_int(c, classes_txt, "class_id"): n for c, n in read_table(classes_txt, 2)}
    ids = sorted(images)
    paths = [str(root / "images" / images[i]) for i in ids]
    if check_files:
        check_images_exist(paths, "cub", "images.txt")
    keys = [labels[i] for i in ids]
    train, test = split_by_class_order(paths, keys, names)
    standard = check_standard("CUB-200-2011", {"images": len(ids), "classes": len(set(keys))},
                              PUBLISHED)
    return finish("cub", root, {"train": train, "test": test}, (EvalSet("test", "test"),),
                  RECALL_KS, train_classes, {"standard": standard, "index": str(images_txt)})
