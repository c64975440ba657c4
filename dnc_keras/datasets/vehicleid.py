"""PKU VehicleID from train_test_split/*.txt and image/*.jpg.

Each list holds `<image name> <vehicle id>` per line (the name without `.jpg`). Train: 13,164
vehicles (train_list.txt); test: the small, medium and large lists of 800, 1,600 and 2,400
vehicles (test_list_800.txt, test_list_1600.txt, test_list_2400.txt), each evaluated on its own
by leave-one-out retrieval with R@1 and R@5, as the CVPR and TPAMI codes do.
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

LAYOUT = ("<root>/train_test_split/{train_list,test_list_800,test_list_1600,test_list_2400}.txt "
          "('<image name> <vehicle id>' per line) and <root>/image/<image name>.jpg")
TEST_LISTS = {"test_800": "small", "test_1600": "medium", "test_2400": "large"}
PUBLISHED = {"train vehicles": 13164, "test_800 vehicles": 800, "test_1600 vehicles": 1600,
             "test_2400 vehicles": 2400}
RECALL_KS = (1, 5)


def _read(root, filename, check_files):
    index = require_file(root / "train_test_split" / filename, "vehicleid", LAYOUT)
    rows = read_table(index, 2)
    paths = [str(root / "image" / f"{name}.jpg") for name, _ in rows]
    vehicles = [parse_int(v, index, "vehicle id") for _, v in rows]
    if check_files:
        check_images_exist(paths, "vehicleid", index.name)
    return make_split(paths, vehicles)


def load_vehicleid(data_dir, train_classes="standard", check_files=True) -> PathDataset:
    """PKU VehicleID as image paths and labels.

    Args:
        data_dir: the `VehicleID_V1.0` folder.
        train_classes: `"standard"` (train_list.txt trains, each test list tests) or `"all"`.
            Defaults to `"standard"`.
        check_files: check that every listed image exists. Defaults to `True`.

    Returns:
        PathDataset with splits `"train"`, `"test_800"`, `"test_1600"`, `"test_2400"` and one
        leave-one-out evaluation per test list (named small, medium, large), R@1 and R@5.

    Raises:
        FileNotFoundError: a list or an image is missing, named.
        ValueError: a malformed line, or a vehicle both in train and in a test list.
    """
    root = dataset_root(data_dir, "vehicleid", LAYOUT)
    splits = {"train": _read(root, "train_list.txt", check_files)}
    for split in TEST_LISTS:
        splits[split] = _read(root, split.replace("test_", "test_list_") + ".txt", check_files)
    counts = {f"{k} vehicles": v.num_classes
              for k, v in splits.items()}
    standard = check_standard("PKU VehicleID", counts, PUBLISHED)
    eval_sets = tuple(EvalSet(size, split) for split, size in TEST_LISTS.items())
    return finish("vehicleid", root, splits, eval_sets, RECALL_KS, train_classes,
                  {"standard": standard})
