"""Pairwise Euclidean distances and label masks shared by the miners and the losses."""

import tensorflow as tf

# sqrt'(x) = 1 / (2 sqrt(x)): flooring the argument bounds the gradient at 5e7 for pairs that are
# almost (but not exactly) identical; the value changes by at most 1e-8, far below float32 noise
# on unit vectors. Same constant as tensorflow-addons' pairwise_distance.
_SQRT_FLOOR = 1e-16


def _as_labels(labels):
    """Returns `labels` as a flat integer vector `[B]`, accepting `[B]` or `[B, 1]`."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        # Keras' default `Loss.__call__` casts `y_true` to float; class ids round-trip exactly.
        labels = tf.cast(tf.round(labels), tf.int64)
    elif labels.dtype.is_bool:
        labels = tf.cast(labels, tf.int32)
    if labels.shape.rank is not None and labels.shape.rank > 2:
        raise ValueError(
            f"labels must have shape [B] or [B, 1]. Received: labels.shape={labels.shape}"
        )
    return tf.reshape(labels, [-1])


def _as_embeddings(embeddings):
    """Returns `embeddings` as a float32 matrix `[B, d]`, whatever its input dtype."""
    embeddings = tf.convert_to_tensor(embeddings)
    if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
        raise ValueError(
            "embeddings must have shape [B, d]. "
            f"Received: embeddings.shape={embeddings.shape}"
        )
    return tf.cast(embeddings, tf.float32)


def pairwise_distances(embeddings, squared=False):
    """Euclidean distances between all rows of a batch, in float32.

    The squared distances come from the Gram expansion
    `|x_i|^2 + |x_j|^2 - 2 x_i . x_j`, clamped at 0 (round-off can make them slightly
    negative) and with the diagonal set to exactly 0. The square root is safe: where the
    squared distance is 0 (the diagonal, duplicated embeddings) the distance is 0 and its
    gradient is 0, never NaN or inf.

    Args:
        embeddings: Tensor `[B, d]` of any float dtype; it is cast to float32 first.
        squared: Whether to return squared distances. Defaults to `False`.

    Returns:
        A float32 tensor `[B, B]`, symmetric, non-negative, zero on the diagonal.

    Example:

    >>> d = pairwise_distances([[0.0, 0.0], [3.0, 4.0]])
    >>> d.numpy().tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    """
    x = _as_embeddings(embeddings)
    sq_norms = tf.reduce_sum(tf.square(x), axis=1)
    d2 = sq_norms[:, None] + sq_norms[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
    d2 = tf.maximum(d2, 0.0)
    diagonal = tf.eye(tf.shape(x)[0], dtype=tf.bool)
    d2 = tf.where(diagonal, tf.zeros_like(d2), d2)
    if squared:
        return d2
    nonzero = d2 > 0.0
    # Both branches of tf.where are differentiated: the masked-out branch must stay finite too.
    safe_d2 = tf.where(nonzero, tf.maximum(d2, _SQRT_FLOOR), tf.ones_like(d2))
    return tf.where(nonzero, tf.sqrt(safe_d2), tf.zeros_like(d2))


def same_label_mask(labels):
    """Boolean `[B, B]` mask, True where two items share a label (diagonal included).

    Args:
        labels: Integer tensor `[B]` or `[B, 1]`.

    Returns:
        A boolean tensor `[B, B]`.
    """
    labels = _as_labels(labels)
    return tf.equal(labels[:, None], labels[None, :])


def positive_mask(labels):
    """Boolean `[B, B]` mask of positive pairs: same label, and not an item with itself.

    Args:
        labels: Integer tensor `[B]` or `[B, 1]`.

    Returns:
        A boolean tensor `[B, B]` with a False diagonal.

    Example:

    >>> positive_mask([0, 0, 1]).numpy().astype(int).tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    same = same_label_mask(labels)
    return tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(same)[0], dtype=tf.bool)))


def negative_mask(labels):
    """Boolean `[B, B]` mask of negative pairs: different labels.

    Args:
        labels: Integer tensor `[B]` or `[B, 1]`.

    Returns:
        A boolean tensor `[B, B]` (its diagonal is always False).

    Example:

    >>> negative_mask([0, 0, 1]).numpy().astype(int).tolist()
    [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    """
    return tf.logical_not(same_label_mask(labels))
