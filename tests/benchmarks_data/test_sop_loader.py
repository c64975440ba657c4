import numpy as np
import pytest

from dnc_keras.datasets import load_paths

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def test_train_and_test_files(sop_root):
    ds = load_paths("sop", sop_root)
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.class_names == ("1", "2", "3") and test.class_names == ("4", "5", "6")
    assert (len(train), len(test)) == (6, 6)
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    assert train.paths[0].endswith("bicycle_final/111085122871_0.JPG")
    assert ds.recall_ks == (1, 10, 100, 1000)
    assert [(e.query, e.gallery) for e in ds.eval_sets] == [("test", None)]


def test_bad_header_is_named(sop_root):
    text = (sop_root / "Ebay_test.txt").read_text().splitlines()
    (sop_root / "Ebay_test.txt").write_text("\n".join(text[1:]))
    with pytest.raises(ValueError, match=r"Ebay_test\.txt: line 1 must be the header "
                                         r"'image_id class_id super_class_id path'"):
        load_paths("sop", sop_root)


def test_missing_test_file(sop_root):
    (sop_root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file '.*Ebay_test\.txt'"):
        load_paths("sop", sop_root)


def test_short_line(sop_root):
    with open(sop_root / "Ebay_train.txt", "a") as f:
        f.write("7 1 1\n")
    with pytest.raises(ValueError, match=r"Ebay_train\.txt: line 8 must have 4 fields"):
        load_paths("sop", sop_root)


def test_class_in_both_files(sop_root, replicas):
    with open(sop_root / "Ebay_test.txt", "a") as f:
        f.write("99 1 1 bicycle_final/111085122871_0.JPG\n")
    with pytest.raises(ValueError, match=r"Train and test classes must be disjoint.*\['1'\]"):
        load_paths("sop", sop_root)
