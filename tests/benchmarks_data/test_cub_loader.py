import numpy as np
import pytest

from dnc_keras.datasets import NonStandardDatasetWarning, PathDataset, load, load_paths

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def test_split_by_class_id_with_names_and_labels(cub_root):
    ds = load_paths("cub", cub_root)
    assert isinstance(ds, PathDataset) and ds.name == "cub"
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.class_names == ("001.Bird_1", "002.Bird_2")
    assert test.class_names == ("003.Bird_3", "004.Bird_4")
    assert (len(train), len(test)) == (6, 6)
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
    for split in (train, test):
        for path, label in zip(split.paths, split.labels):
            assert f"/images/{split.class_names[label]}/" in path
    assert [(e.name, e.query, e.gallery) for e in ds.eval_sets] == [("test", "test", None)]
    assert ds.recall_ks == (1, 2, 4, 8)


def test_load_dispatches_and_all_merges(cub_root):
    ds = load("CUB200", data_dir=cub_root, train_classes="all")
    assert list(ds.splits) == ["train"] and len(ds.train) == 12 and ds.train.num_classes == 4
    assert ds.eval_sets == ()


def test_nonstandard_counts_warn(cub_root):
    with pytest.warns(NonStandardDatasetWarning, match=r"images: 12 \(published 11,788\)"):
        ds = load_paths("cub", cub_root)
    assert ds.info["standard"] is False


def test_missing_index_file_is_named(cub_root):
    (cub_root / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file '.*image_class_labels\.txt'"):
        load_paths("cub", cub_root)


def test_malformed_line_names_file_and_line(cub_root):
    lines = (cub_root / "images.txt").read_text().splitlines()
    lines[2] = "3"
    (cub_root / "images.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"images\.txt: line 3 must have 2 fields"):
        load_paths("cub", cub_root)


def test_non_integer_class_id(cub_root):
    text = (cub_root / "image_class_labels.txt").read_text().replace("1 1\n", "1 one\n", 1)
    (cub_root / "image_class_labels.txt").write_text(text)
    with pytest.raises(ValueError, match=r"class_id must be an integer. Received: 'one'"):
        load_paths("cub", cub_root)


def test_mismatched_ids(cub_root):
    lines = (cub_root / "image_class_labels.txt").read_text().splitlines()
    (cub_root / "image_class_labels.txt").write_text("\n".join(lines[:-1]))
    with pytest.raises(ValueError, match=r"Only in images\.txt: \[12\]"):
        load_paths("cub", cub_root)


def test_missing_image_is_named(cub_root):
    victim = next((cub_root / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 image file\(s\) .* '{victim}'"):
        load_paths("cub", cub_root)
    assert len(load_paths("cub", cub_root, check_files=False).train) == 6


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_paths("cub", tmp_path / "nowhere")
