"""--augment's random affine jitter: the transform against scipy's, the draws within their stated
ranges, and the same batches for the same seed whatever tf.data's scheduling."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from dnc_keras.augmentation import RandomAffine, apply
from dnc_keras.sampling import ClusterBatchSampler


def scipy_affine(image, angle, shift):
    """The same map with scipy: in = R(-angle)(out - centre - shift * size) + centre.

    Returns the image and a mask of the output pixels whose source point lies inside the input
    (outside it the two fill differently: scipy blends the border with 0, TensorFlow does not).
    """
    h, w = image.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    t = np.array([shift[0] * h, shift[1] * w])
    cos, sin = math.cos(angle), math.sin(angle)
    matrix = np.array([[cos, -sin], [sin, cos]])
    offset = centre - matrix @ (centre + t)
    out = ndimage.affine_transform(image, matrix, offset, order=1, mode="constant", cval=0.0)
    grid = np.stack(np.mgrid[:h, :w], -1).reshape(-1, 2)
    source = grid @ matrix.T + offset
    inside = ((source >= 0) & (source <= [h - 1, w - 1])).all(axis=1).reshape(h, w)
    return out, inside


def test_transform_matches_scipy():
    rng = np.random.default_rng(0)
    images = rng.random((3, 21, 17)).astype(np.float32)
    angles = np.array([0.1, -0.18, 0.0], np.float32)
    shifts = np.array([[0.05, -0.08], [0.0, 0.03], [-0.07, 0.0]], np.float32)
    got = apply(images[..., None], angles, shifts).numpy()[..., 0]
    for i in range(3):
        expected, inside = scipy_affine(images[i], float(angles[i]), shifts[i])
        assert inside.mean() > 0.7
        np.testing.assert_allclose(got[i][inside], expected[inside], atol=1e-4)


def test_draws_stay_within_the_stated_ranges_and_fill_them():
    augment = RandomAffine(max_rotation=10.8, max_shift=0.08)
    angles, shifts = augment.draw(4000, tf.constant([3, 9], tf.int64))
    angles, shifts = np.degrees(angles.numpy()), shifts.numpy()
    assert np.abs(angles).max() <= 10.8 and np.abs(shifts).max() <= 0.08
    assert np.abs(angles).max() > 10.5 and np.abs(shifts).max() > 0.078  # uniform, not narrower
    assert abs(angles.mean()) < 0.5 and np.abs(shifts.mean(axis=0)).max() < 0.004
    with pytest.raises(ValueError, match="max_shift"):
        RandomAffine(max_shift=1.5)


def _batches(seed, images, labels, parallel):
    sampler = ClusterBatchSampler(labels, 2, 2, seed=seed, steps_per_epoch=3)
    dataset = sampler.as_dataset(images, augment=RandomAffine())
    options = tf.data.Options()
    options.deterministic = not parallel  # a scheduling that may reorder the map calls
    return [x["images"].numpy() for epoch in range(2) for x, _ in dataset.with_options(options)]


def test_augmented_batches_depend_on_the_seed_only():
    rng = np.random.default_rng(1)
    images = rng.random((12, 16, 16, 1)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    first = _batches(5, images, labels, parallel=False)
    again = _batches(5, images, labels, parallel=True)
    other = _batches(6, images, labels, parallel=False)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(a - c).max() > 0 for a, c in zip(first, other))
    # Augmented: no batch equals its images un-augmented.
    sampler = ClusterBatchSampler(labels, 2, 2, seed=5, steps_per_epoch=3)
    plain = [x["images"].numpy() for x, _ in sampler.as_dataset(images)]
    assert all(np.abs(a - p).max() > 0.01 for a, p in zip(first[:3], plain))
