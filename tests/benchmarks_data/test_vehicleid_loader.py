import numpy as np
import pytest

from dnc_keras.datasets import load_paths

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def test_train_and_three_test_lists(vehicleid_root):
    ds = load_paths("vid", vehicleid_root)
    assert list(ds.splits) == ["train", "test_800", "test_1600", "test_2400"]
    assert ds.train.class_names == ("10", "11", "12") and len(ds.train) == 9
    assert [len(ds.splits[k]) for k in ("test_800", "test_1600", "test_2400")] == [2, 4, 6]
    np.testing.assert_array_equal(ds.splits["test_2400"].labels, [0, 0, 1, 1, 2, 2])
    assert ds.train.paths[0].endswith("image/0000001.jpg")
    assert [(e.name, e.query, e.gallery) for e in ds.eval_sets] == [
        ("small", "test_800", None), ("medium", "test_1600", None),
        ("large", "test_2400", None)]
    assert ds.recall_ks == (1, 5)


def test_all_deduplicates_nested_lists(vehicleid_root):
    ds = load_paths("vehicleid", vehicleid_root, train_classes="all")
    # The nested test lists repeat their images: 6 distinct ones, each once.
    assert len(ds.train) == 9 + 6 and ds.train.num_classes == 6
    assert len(set(ds.train.paths.tolist())) == len(ds.train)
    small = load_paths("vehicleid", vehicleid_root).splits["test_800"].paths.tolist()
    assert set(small) <= set(ds.train.paths.tolist())


def test_missing_test_list(vehicleid_root):
    (vehicleid_root / "train_test_split" / "test_list_1600.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file '.*test_list_1600\.txt'"):
        load_paths("vehicleid", vehicleid_root)


def test_bad_vehicle_id(vehicleid_root):
    path = vehicleid_root / "train_test_split" / "train_list.txt"
    path.write_text(path.read_text().replace(" 10\n", " ten\n", 1))
    with pytest.raises(ValueError, match=r"train_list\.txt: vehicle id must be an integer"):
        load_paths("vehicleid", vehicleid_root)


def test_vehicle_in_train_and_test(vehicleid_root):
    path = vehicleid_root / "train_test_split" / "test_list_800.txt"
    path.write_text(path.read_text() + "0000001 10\n")
    with pytest.raises(ValueError, match=r"Train and test_800 classes must be disjoint.*'10'"):
        load_paths("vehicleid", vehicleid_root)


def test_missing_image(vehicleid_root):
    (vehicleid_root / "image" / "0000010.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_list_800\.txt are missing: "
                                                r"'.*0000010\.jpg'"):
        load_paths("vehicleid", vehicleid_root)
