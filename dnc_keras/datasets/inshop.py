"""In-shop Clothes Retrieval (DeepFashion) from list_eval_partition.txt.

The file's first line is the number of images, the second the header
`image_name item_id evaluation_status`, then one `img/.../x.jpg id_00000001 train|query|gallery`
per line. Train: 3,997 items, 25,882 images; test: 3,985 items as 14,218 queries searched
against 12,612 gallery images (method.md, section 8). Both archive layouts are accepted: the
list at the root or in `Eval/`, the `img/` folder at the root or in `Img/`.
"""

from __future__ import annotations

import warnings

import numpy as np

from dnc_keras.datasets._paths import (
    EvalSet,
    ImageSplit,
    PathDataset,
    check_images_exist,
    check_standard,
    dataset_root,
    finish,
    make_split,
    parse_int,
    read_table,
)

LAYOUT = ("<root>/list_eval_partition.txt or <root>/Eval/list_eval_partition.txt (line 1: the "
          "number of images; line 2: 'image_name item_id evaluation_status'; then "
          "'img/<...>.jpg id_<n> train|query|gallery'), images under <root>/img/ or "
          "<root>/Img/img/")
HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
PUBLISHED = {"train images": 25882, "train classes": 3997, "query images": 14218,
             "gallery images": 12612, "test classes": 3985}
RECALL_KS = (1, 10, 20, 30, 40, 50)


def _find_list(root):
    for candidate in (root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"inshop: missing file '{root / 'list_eval_partition.txt'}' (also "
                            f"looked in '{root / 'Eval'}'). Expected layout: {LAYOUT}")


def _image_root(root, first_path):
    """The folder the list's paths are relative to: <root> or <root>/Img."""
    for base in (root, root / "Img"):
        if (base / first_path).is_file():
            return base
    return root


def load_inshop(data_dir, train_classes="standard", check_files=True) -> PathDataset:
    """In-shop Clothes as image paths and labels.

    Args:
        data_dir: the In-shop folder (holding `list_eval_partition.txt` or `Eval/`).
        train_classes: `"standard"` (the `train` rows train; `query` and `gallery` test) or
            `"all"`. Defaults to `"standard"`.
        check_files: check that every listed image exists. Defaults to `True`.

    Returns:
        PathDataset with splits `"train"`, `"query"` and `"gallery"` (query and gallery share
        their class names, the item ids), one evaluation: queries against the gallery,
        R@1, 10, 20, 30, 40, 50.

    Raises:
        FileNotFoundError: the list or an image is missing, named.
        ValueError: a malformed count, header or line, or an unknown evaluation status.
    """
    root = dataset_root(data_dir, "inshop", LAYOUT)
    index = _find_list(root)
    rows = read_table(index, 3, skip=1, header=HEADER)
    with open(index, encoding="utf-8") as f:
        declared = parse_int(f.readline().strip(), index, "line 1 (the number of images)")
    if declared != len(rows):
        raise ValueError(f"{index}: line 1 declares {declared} images but {len(rows)} are "
                         "listed (a truncated file?)")
    bad = [r for r in rows if r[2] not in STATUSES]
    if bad:
        raise ValueError(f"{index}: evaluation_status must be one of {STATUSES}. Received: "
                         f"{' '.join(bad[0])!r}")
    for row in rows:
        if not row[1].startswith("id_"):
            raise ValueError(f"{index}: item_id must look like 'id_00000001'. Received: "
                             f"{' '.join(row)!r}")
    base = _image_root(root, rows[0][0])
    by_status = {s: [r for r in rows if r[2] == s] for s in STATUSES}
    for status, group in by_status.items():
        if not group:
            raise ValueError(f"{index}: no image has evaluation_status {status!r}")
    paths = {s: [str(base / r[0]) for r in group] for s, group in by_status.items()}
    if check_files:
        for status in STATUSES:
            check_images_exist(paths[status], "inshop", f"{index.name} ({status})")
    train = make_split(paths["train"], [r[1] for r in by_status["train"]])
    # Query and gallery label their items on one scale, so that a query finds its gallery
    # images by label.
    test_items = sorted({r[1] for s in ("query", "gallery") for r in by_status[s]})
    position = {item: i for i, item in enumerate(test_items)}
    query, gallery = (
        ImageSplit(paths[s], np.array([position[r[1]] for r in by_status[s]], np.int32),
                   tuple(test_items))
        for s in ("query", "gallery"))
    orphans = sorted({r[1] for r in by_status["query"]} - {r[1] for r in by_status["gallery"]})
    if orphans:
        warnings.warn(f"inshop: {len(orphans)} query item(s) have no gallery image (e.g. "
                      f"{orphans[0]}); their queries count as misses", stacklevel=2)
    standard = check_standard("In-shop Clothes", {
        "train images": len(train), "train classes": train.num_classes,
        "query images": len(query), "gallery images": len(gallery),
        "test classes": len(test_items)}, PUBLISHED)
    return finish("inshop", root, {"train": train, "query": query, "gallery": gallery},
                  (EvalSet("test", "query", "gallery"),), RECALL_KS, train_classes,
                  {"standard": standard, "index": str(index), "images": str(base)})
