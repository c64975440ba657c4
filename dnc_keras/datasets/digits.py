"""Digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images); nothing to download.

Ten classes only, so it is a smoke test for the pipeline rather than a benchmark: digits 0-4
train, 5-9 test.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dnc_keras.datasets._base import MetricDataset, assemble, check_train_classes, image_hw

_NATIVE_SIZE = 8
_MAX_VALUE = 16.0  # load_digits stores ink as integers 0..16


def load_digits(image_size=_NATIVE_SIZE, seed=0, train_classes="standard") -> MetricDataset:
    """scikit-learn's digits, strokes bright on black.

    Args:
        image_size: int or (height, width); other than 8, each image is resized bilinearly
            (bilinear rather than bicubic, so values stay in [0, 1] without clipping).
            Defaults to `8`.
        seed: unused, the split is fixed; accepted so that every loader takes it. Defaults to `0`.
        train_classes: `"standard"` (digits 0-4 train, 5-9 test) or `"all"` (every digit trains,
            test is empty). Defaults to `"standard"`.

    Returns:
        MetricDataset named `"digits"`, images [N, H, W, 1]; class names `"0"`..`"9"`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    del seed
    check_train_classes(train_classes)
    hw = image_hw(image_size)
    bunch = sklearn_digits()
    x = (bunch.images / _MAX_VALUE).astype(np.float32)
    if hw != (_NATIVE_SIZE, _NATIVE_SIZE):
        size, bilinear = (hw[1], hw[0]), Image.Resampling.BILINEAR
        x = np.stack([np.asarray(Image.fromarray(im, "F").resize(size, bilinear)) for im in x])
    x = np.clip(x, 0.0, 1.0)[..., None]
    images_by_class = {str(d): x[bunch.target == d] for d in range(10)}
    names = [str(d) for d in range(10)]
    train_names, test_names = (names, []) if train_classes == "all" else (names[:5], names[5:])
    info = {"source": "sklearn.datasets.load_digits (the test set of UCI's handwritten digits)"}
    return assemble("digits", images_by_class, train_names, test_names, info)
