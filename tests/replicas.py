"""Tiny replicas of the benchmarks' on-disk formats: real index files, a few JPEGs per class.

Each builder writes into a folder and returns it; the layouts and file formats are those of the
published archives (see each loader's LAYOUT), with 2 to 4 classes per split.
"""

import numpy as np
from PIL import Image

PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200),
           (200, 30, 200), (120, 120, 120), (250, 250, 250)]


def write_jpeg(path, class_index, size=(40, 30), photo=False):
    """A JPEG of class colour plus noise; `photo=True`: a photograph-like image of a
    class-specific scene at a size drawn around `size` (non-square, different per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if photo:
        import image_corpus

        scene = np.random.default_rng(1000 + class_index)
        width = int(size[0] * rng.uniform(0.8, 1.3))
        height = int(size[1] * rng.uniform(0.8, 1.3))
        pixels = image_corpus.photo(scene, height, width).astype(np.float32)
        pixels += rng.normal(0, 12, pixels.shape) + rng.uniform(-25, 25, 3)
    else:
        base = np.array(PALETTE[class_index % len(PALETTE)], np.float32)
        pixels = base + rng.normal(0, 10, (size[1], size[0], 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=88)


def build_cub(root, classes=4, per_class=3, photo_size=None):
    """CUB_200_2011: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt.

    `photo_size` (width, height): photograph-like JPEGs around that size instead of colour
    swatches."""
    images, labels, split, names = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {folder}")
        for i in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{i:04d}_{image_id}.jpg"
            if photo_size:
                write_jpeg(root / "images" / rel, c - 1, photo_size, photo=True)
            else:
                write_jpeg(root / "images" / rel, c - 1)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {i % 2}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def build_cars(root, classes=4, per_class=3, mat_name="cars_annos.mat"):
    """cars_annos.mat (1 x N struct 'annotations', 1 x C cell 'class_names') and car_ims/."""
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    n = classes * per_class
    annotations = np.zeros((1, n), dtype=[(f, "O") for f in fields])
    for k in range(n):
        c = k // per_class + 1
        rel = f"car_ims/{k + 1:06d}.jpg"
        write_jpeg(root / rel, c - 1)
        annotations[0, k] = (np.array([rel]), np.array([[3]], np.uint8),
                             np.array([[4]], np.uint8), np.array([[35]], np.uint8),
                             np.array([[25]], np.uint8), np.array([[c]], np.uint8),
                             np.array([[k % 2]], np.uint8))
    class_names = np.empty((1, classes), dtype=object)
    for c in range(classes):
        class_names[0, c] = f"Maker Model {c + 1} 2012"
    scipy.io.savemat(root / mat_name, {"annotations": annotations, "class_names": class_names})
    return root


def build_sop(root, train_classes=3, test_classes=3, per_class=2):
    """Ebay_train.txt / Ebay_test.txt with their header; images in <super>_final/."""
    header = "image_id class_id super_class_id path"
    supers = ["bicycle", "cabinet"]
    image_id = 0
    for filename, first, count in (("Ebay_train.txt", 1, train_classes),
                                   ("Ebay_test.txt", train_classes + 1, test_classes)):
        lines = [header]
        for c in range(first, first + count):
            s = (c - 1) % len(supers)
            for i in range(per_class):
                image_id += 1
                rel = f"{supers[s]}_final/{111085122870 + c}_{i}.JPG"
                write_jpeg(root / rel, c - 1)
                lines.append(f"{image_id} {c} {s + 1} {rel}")
        (root / filename).write_text("\n".join(lines) + "\n")
    return root


def build_inshop(root, eval_folder=False, img_folder=False, extra_train_items=0):
    """list_eval_partition.txt: count, header, then 'img/... id_XXXXXXXX status' rows.

    Train items 1-3 (2, 2 and 3 images) and `extra_train_items` more of 3 images; test items
    4-6 with their queries and gallery images.
    """
    rows = []
    plan = [(1, ["train"] * 2), (2, ["train"] * 2), (3, ["train"] * 3),
            (4, ["query", "query", "gallery"]), (5, ["query", "gallery", "gallery"]),
            (6, ["query", "query", "gallery"])]
    plan += [(7 + i, ["train"] * 3) for i in range(extra_train_items)]
    image_root = root / "Img" if img_folder else root
    for item, statuses in plan:
        for i, status in enumerate(statuses):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{i + 1:02d}_{i + 1}_front.jpg"
            write_jpeg(image_root / rel, item - 1)
            rows.append(f"{rel}    id_{item:08d}    {status}")
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    list_dir = root / "Eval" if eval_folder else root
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / "list_eval_partition.txt").write_text(text)
    return root


def build_vehicleid(root):
    """train_test_split/{train_list,test_list_800,1600,2400}.txt and image/<name>.jpg.

    Train vehicles 10, 11, 12 (3 images each); test lists nested as in the archive, the same
    image lines repeated: the 800 list holds vehicle 20, the 1600 list 20-21, the 2400 list
    20-22 (2 images each, 6 distinct test images in all).
    """
    split_dir = root / "train_test_split"
    split_dir.mkdir(parents=True)
    counter = 0
    lines = {}

    def line(vehicle, k):
        nonlocal counter
        if (vehicle, k) not in lines:
            counter += 1
            image = f"{counter:07d}"
            write_jpeg(root / "image" / f"{image}.jpg", vehicle)
            lines[(vehicle, k)] = f"{image} {vehicle}"
        return lines[(vehicle, k)]

    def write_list(name, vehicles, per_vehicle):
        text = [line(v, k) for v in vehicles for k in range(per_vehicle)]
        (split_dir / name).write_text("\n".join(text) + "\n")

    write_list("train_list.txt", [10, 11, 12], 3)
    write_list("test_list_800.txt", [20], 2)
    write_list("test_list_1600.txt", [20, 21], 2)
    write_list("test_list_2400.txt", [20, 21, 22], 2)
    return root


