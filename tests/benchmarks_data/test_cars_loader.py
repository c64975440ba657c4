import numpy as np
import pytest
import scipy.io

from dnc_keras.datasets import load_paths
from dnc_keras.datasets.cars import read_annotations

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def test_replica_has_the_published_struct_layout(cars_root):
    raw = scipy.io.loadmat(cars_root / "cars_annos.mat")
    annotations = raw["annotations"]
    assert annotations.shape == (1, 12)
    assert annotations.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2",
                                       "bbox_y2", "class", "test")
    # The TPAMI loader's indexing: a[0][0] is the path, a[5][0] the 1-based class ([1] here).
    first = annotations[0][0]
    assert first[0][0] == "car_ims/000001.jpg" and first[5][0].tolist() == [1]
    assert raw["class_names"].shape == (1, 4)


def test_split_by_class_id_ignoring_test_flag(cars_root):
    ds = load_paths("cars196", cars_root)
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.class_names == ("Maker Model 1 2012", "Maker Model 2 2012")
    assert test.class_names == ("Maker Model 3 2012", "Maker Model 4 2012")
    assert (len(train), len(test)) == (6, 6)
    np.testing.assert_array_equal(test.labels, [0, 0, 0, 1, 1, 1])
    assert train.paths[0].endswith("car_ims/000001.jpg")
    assert test.paths[0].endswith("car_ims/000007.jpg")
    assert ds.recall_ks == (1, 2, 4, 8)


def test_read_annotations(cars_root):
    paths, classes, names = read_annotations(cars_root / "cars_annos.mat")
    assert paths[3] == "car_ims/000004.jpg" and classes == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert names[4] == "Maker Model 4 2012"


def test_missing_mat_is_named(cars_root):
    (cars_root / "cars_annos.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file '.*cars_annos\.mat'"):
        load_paths("cars", cars_root)


def test_mat_without_annotations(cars_root):
    scipy.io.savemat(cars_root / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(ValueError, match=r"no 'annotations' variable. Found: \['something_else'\]"):
        load_paths("cars", cars_root)


def test_struct_without_class_field(cars_root):
    annotations = np.zeros((1, 2), dtype=[("relative_im_path", "O"), ("test", "O")])
    annotations[0, 0] = (np.array(["car_ims/000001.jpg"]), np.array([[0]]))
    annotations[0, 1] = (np.array(["car_ims/000002.jpg"]), np.array([[0]]))
    scipy.io.savemat(cars_root / "cars_annos.mat", {"annotations": annotations})
    with pytest.raises(ValueError, match="the annotations have no field 'class'"):
        load_paths("cars", cars_root)


def test_not_a_mat_file(cars_root):
    (cars_root / "cars_annos.mat").write_bytes(b"this is not MATLAB")
    with pytest.raises(ValueError, match="cannot read .* as a MATLAB file"):
        load_paths("cars", cars_root)


def test_missing_image(cars_root):
    (cars_root / "car_ims" / "000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"listed in cars_annos\.mat are missing: "
                                                r"'.*000005\.jpg'"):
        load_paths("cars", cars_root)
