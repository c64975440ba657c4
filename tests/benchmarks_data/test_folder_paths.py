import numpy as np
import pytest
from PIL import Image

from dnc_keras.datasets import load_folder, load_paths


def _folder(root, classes=("ant", "bee", "cat", "dog", "elk"), per_class=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 10), (40 * c, 0, 0)).save(root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("ignored")
    return root


def test_folder_as_paths_matches_the_in_memory_split(tmp_path):
    root = _folder(tmp_path / "f")
    ds = load_paths("folder", root)
    memory = load_folder(root, image_size=8)
    assert ds.train.class_names == memory.class_names_train == ("ant", "bee", "cat")
    assert ds.splits["test"].class_names == memory.class_names_test
    np.testing.assert_array_equal(ds.train.labels, memory.y_train)
    assert all(p.endswith(".png") for p in ds.train.paths)


def test_omniglot_layout_as_paths(tmp_path):
    for alphabet in ("Greek", "Latin"):
        _folder(tmp_path / "o" / alphabet, classes=("character01", "character02"))
    ds = load_paths("omniglot", tmp_path / "o")
    assert ds.train.class_names == ("Greek/character01", "Greek/character02")
    assert len(ds.splits["test"]) == 6


def test_single_image_class_is_named(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "lonely").mkdir()
    Image.new("RGB", (4, 4)).save(root / "lonely" / "0.png")
    with pytest.raises(ValueError, match="class 'lonely' has 1 image"):
        load_paths("folder", root)
