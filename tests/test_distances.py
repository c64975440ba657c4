import numpy as np
import pytest
import tensorflow as tf

from dnc_keras.distances import negative_mask
from dnc_keras.distances import pairwise_distances
from dnc_keras.distances import positive_mask


def _oracle(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy(dtype, seed):
    x = np.random.default_rng(seed).normal(size=(12, 7))
    xt = tf.cast(tf.constant(x), dtype)
    expected = _oracle(tf.cast(xt, tf.float64).numpy())
    d = pairwise_distances(xt)
    assert d.dtype == tf.float32
    np.testing.assert_allclose(d.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        pairwise_distances(xt, squared=True).numpy(), expected**2, rtol=1e-4, atol=1e-4
    )


def test_diagonal_exactly_zero_and_symmetric():
    x = tf.math.l2_normalize(tf.random.stateless_normal([20, 64], seed=[1, 2]) * 1e3, axis=1)
    d = pairwise_distances(x).numpy()
    assert np.all(np.diag(d) == 0.0)
    assert np.all(d >= 0.0)
    np.testing.assert_allclose(d, d.T, atol=1e-6)


def test_tiny_case():
    d = pairwise_distances([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]).numpy()
    np.testing.assert_allclose(d, [[0, 5, 5], [5, 0, 0], [5, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_gradient_finite_at_zero_distance(squared):
    # Duplicates, an all-zero row and exact self-pairs: the sqrt's worst cases.
    x = tf.Variable([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.6, 0.8]])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(pairwise_distances(x, squared=squared))
    grad = tape.gradient(total, x).numpy()
    # Oracle: sum over ordered pairs (i, j) of d(i, j); where x_i = x_j the distance's
    # subgradient is taken as 0 (the squared one's gradient is 0 there anyway).
    points = x.numpy().astype(np.float64)
    expected = np.zeros_like(points)
    for i in range(len(points)):
        for j in range(len(points)):
            diff = points[i] - points[j]
            norm = np.linalg.norm(diff)
            if norm > 0:
                # d(i, j) and d(j, i) both move with x_i.
                expected[i] += 2 * (2 * diff if squared else diff / norm)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_gradient_matches_numeric():
    x0 = np.random.default_rng(3).normal(size=(5, 3))
    x = tf.Variable(x0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(pairwise_distances(x) ** 1.5)
    grad = tape.gradient(total, x).numpy()
    eps = 1e-3
    numeric = np.zeros_like(x0)
    for i in range(5):
        for j in range(3):
            plus, minus = x0.copy(), x0.copy()
            plus[i, j] += eps
            minus[i, j] -= eps
            diff = (_oracle(plus) ** 1.5).sum() - (_oracle(minus) ** 1.5).sum()
            numeric[i, j] = diff / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape", [(5,), (5, 1)])
def test_masks(shape):
    labels = np.array([0, 0, 1, 2, 1]).reshape(shape)
    pos = positive_mask(labels).numpy()
    neg = negative_mask(labels).numpy()
    flat = labels.reshape(-1)
    for i in range(5):
        for j in range(5):
            assert pos[i, j] == (i != j and flat[i] == flat[j])
            assert neg[i, j] == (flat[i] != flat[j])


def test_float_labels_are_rounded_back():
    assert np.array_equal(positive_mask([3.0, 3.0, 7.0]).numpy(), positive_mask([3, 3, 7]).numpy())


def test_bad_shapes():
    with pytest.raises(ValueError, match="embeddings must have shape"):
        pairwise_distances(tf.zeros([2, 3, 4]))
    with pytest.raises(ValueError, match="labels must have shape"):
        positive_mask(tf.zeros([2, 3, 4], tf.int32))
