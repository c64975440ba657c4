"""Digits, plus the `load` dispatcher and MetricDataset's own checks (both cheap with digits)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from dnc_keras.datasets import DATASET_NAMES, MetricDataset, load, load_digits


def test_split_zero_to_four_train_five_to_nine_test():
    ds = load_digits()
    assert ds.class_names_train == ("0", "1", "2", "3", "4")
    assert ds.class_names_test == ("5", "6", "7", "8", "9")
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    ref = sklearn_digits()
    # Test label 0 is digit 5: ink 0..16 stored as uint8 round(v * 255 / 16), then / 255.
    expected = np.round(ref.images[ref.target == 5] * 255 / 16) / 255
    np.testing.assert_allclose(ds.x_test[ds.y_test == 0][..., 0], expected, atol=1e-7)
    raw = np.concatenate([ref.images[ref.target == d] for d in range(5, 10)])
    assert np.array_equal(ds.test_sources[..., 0], np.round(raw * 255 / 16).astype(np.uint8))
    assert len(ds.y_train) + len(ds.y_test) == len(ref.target)


def test_upscale_and_all_classes():
    ds = load("digits", image_size=28, train_classes="all")
    assert ds.x_train.shape == (1797, 28, 28, 1)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.num_classes_train == 10 and ds.x_test.shape == (0, 28, 28, 1)


def test_unknown_name_lists_valid_ones():
    expected = "Unknown dataset 'mnist'. Expected one of: glyphs, digits, omniglot, folder"
    with pytest.raises(ValueError, match=expected):
        load("mnist")
    assert DATASET_NAMES == ("glyphs", "digits", "omniglot", "folder")


def test_data_dir_errors(monkeypatch):
    monkeypatch.delenv("DNC_OMNIGLOT_DIR", raising=False)
    with pytest.raises(ValueError, match="pass data_dir or set DNC_OMNIGLOT_DIR"):
        load("omniglot")
    with pytest.raises(ValueError, match=r"'folder' reads images from disk: pass data_dir\."):
        load("folder")
    with pytest.raises(ValueError, match="'digits' needs no data_dir"):
        load("digits", data_dir="/tmp")
    with pytest.raises(TypeError):
        load("digits", rotations=True)


def _tiny(**overrides):
    fields = dict(
        x_train=np.zeros((4, 2, 2, 1), np.float32),
        y_train=np.array([0, 0, 1, 1], np.int32),
        x_test=np.zeros((2, 2, 2, 1), np.float32),
        y_test=np.array([0, 0], np.int32),
        class_names_train=("a", "b"),
        class_names_test=("c",),
        name="tiny",
    )
    fields.update(overrides)
    return MetricDataset(**fields)


def test_metric_dataset_checks():
    ds = _tiny()
    assert ds.image_shape == (2, 2, 1) and "train=4 images / 2 classes" in repr(ds)
    with pytest.raises(ValueError, match="disjoint"):
        _tiny(class_names_test=("a",))
    with pytest.raises(ValueError, match="float32"):
        _tiny(x_train=np.zeros((4, 2, 2, 1), np.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _tiny(x_train=np.full((4, 2, 2, 1), 2.0, np.float32))
    with pytest.raises(ValueError, match="every label 0..1"):
        _tiny(y_train=np.array([0, 0, 2, 2], np.int32))
    with pytest.raises(ValueError, match="same image shape"):
        _tiny(x_test=np.zeros((2, 3, 3, 1), np.float32))
