"""Digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images); nothing to download.

Ten classes only, so it is a smoke test for the pipeline rather than a benchmark: digits 0-4
train, 5-9 test.
"""

from __future__ import annotations

import numpy as np

from dnc_keras.datasets._base import MetricDataset, assemble, check_train_classes, image_hw

_NATIVE_SIZE = 8
_MAX_VALUE = 16.0  # load_digits stores ink as integers 0..16


def preprocessing(image_size=_NATIVE_SIZE):
    """The digits' record: grey, antialiased bilinear from the native 8x8 (bilinear rather than
    bicubic, so values stay in [0, 1] without clipping)."""
    from dnc_keras.preprocessing import Preprocessing

    return Preprocessing(size=image_hw(image_size), channels=1, kernel="bilinear")


def load_digits(image_size=_NATIVE_SIZE, seed=0, train_classes="standard") -> MetricDataset:
    """scikit-learn's digits, strokes bright on black, as uint8 (ink 0..16 scaled to 0..255).

    Args:
        image_size: int or (height, width); other than 8, each image is resized by the
            record (`preprocessing`). Defaults to `8`.
        seed: unused, the split is fixed; accepted so that every loader takes it. Defaults to `0`.
        train_classes: `"standard"` (digits 0-4 train, 5-9 test) or `"all"` (every digit trains,
            test is empty). Defaults to `"standard"`.

    Returns:
        MetricDataset named `"digits"`, images [N, H, W, 1]; class names `"0"`..`"9"`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    from dnc_keras.preprocessing import transform_arrays

    del seed
    check_train_classes(train_classes)
    record = preprocessing(image_size)
    bunch = sklearn_digits()
    raw = np.round(bunch.images * (255.0 / _MAX_VALUE)).astype(np.uint8)[..., None]
    x = transform_arrays(raw, record)
    images_by_class = {str(d): x[bunch.target == d] for d in range(10)}
    renders = {str(d): raw[bunch.target == d] for d in range(10)}
    names = [str(d) for d in range(10)]
    train_names, test_names = (names, []) if train_classes == "all" else (names[:5], names[5:])
    info = {"source": "sklearn.datasets.load_digits (the test set of UCI's handwritten digits)"}
    return assemble("digits", images_by_class, train_names, test_names, info, record, renders)
