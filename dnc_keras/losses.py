"""Deep metric learning losses for one learner: margin, triplet semi-hard / hard, contrastive.

Every loss takes `y_true` = integer class labels `[B]` or `[B, 1]` and `y_pred` = embeddings
`[B, d]` (any float dtype) and returns one float32 scalar for the batch. All arithmetic is float32
with a safe square root (`dnc_keras.distances.pairwise_distances`), so degenerate batches
(duplicated embeddings, one-image classes, no positive or no negative pair) give finite values and
finite gradients.
"""

import keras
import tensorflow as tf

from dnc_keras.distances import _as_embeddings
from dnc_keras.distances import _as_labels
from dnc_keras.distances import negative_mask
from dnc_keras.distances import pairwise_distances
from dnc_keras.distances import positive_mask
from dnc_keras.mining import DistanceWeightedSampler
from dnc_keras.mining import effective_dimension


def _prepare(y_true, y_pred):
    labels = _as_labels(y_true)
    embeddings = _as_embeddings(y_pred)
    n_labels = tf.compat.dimension_value(labels.shape[0])
    n_items = tf.compat.dimension_value(embeddings.shape[0])
    if n_labels is not None and n_items is not None and n_labels != n_items:
        raise ValueError(
            "y_true must hold one label per embedding. "
            f"Received: {n_labels} labels for {n_items} embeddings"
        )
    return labels, embeddings


def margin_loss_from_triplets(
    distances, anchor_idx, positive_idx, negative_idx, valid_mask, alpha=0.2, beta=1.2, nu=0.0
):
    """Margin loss of Wu et al. (2017) over given triplets.

    `l+ = max(0, d(a, p) - beta + alpha)`, `l- = max(0, beta - d(a, n) + alpha)`,
    `L = (sum(l+) + sum(l-) + nu * |beta|) / (number of non-zero l+ and l- terms)`, and
    `L = 0` when no term is non-zero.

    Args:
        distances: Float32 tensor `[B, B]` of distances (gradients flow through it).
        anchor_idx: Int tensor `[T]`.
        positive_idx: Int tensor `[T]`.
        negative_idx: Int tensor `[T]`.
        valid_mask: Bool tensor `[T]`; triplets where it is False are ignored.
        alpha: Margin around the boundary. Defaults to `0.2`.
        beta: Boundary between positive and negative distances. Defaults to `1.2`.
        nu: Weight of the `|beta|` regulariser. Defaults to `0.0`.

    Returns:
        A float32 scalar.
    """
    pos_pairs = tf.stack([anchor_idx, positive_idx], axis=1)
    neg_pairs = tf.stack([anchor_idx, negative_idx], axis=1)
    d_ap = tf.gather_nd(distances, pos_pairs)
    d_an = tf.gather_nd(distances, neg_pairs)
    zeros = tf.zeros_like(d_ap)
    pos_loss = tf.where(valid_mask, tf.nn.relu(d_ap - beta + alpha), zeros)
    neg_loss = tf.where(valid_mask, tf.nn.relu(beta - d_an + alpha), zeros)
    num_terms = tf.reduce_sum(tf.cast(pos_loss > 0.0, tf.float32)) + tf.reduce_sum(
        tf.cast(neg_loss > 0.0, tf.float32)
    )
    total = tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss) + nu * abs(beta)
    return tf.math.divide_no_nan(total, num_terms)


def triplet_semihard_loss(y_true, y_pred, margin=1.0):
    """Triplet loss with semi-hard negatives, as tensorflow-addons computes it.

    For every positive pair (a, p), a != p, the negative is the closest negative of `a` that is
    strictly farther than `p`; if there is none, the farthest negative of `a`; if `a` has no
    negative at all, distance 0 is used (tensorflow-addons' masked maximum of an empty row).
    The loss is the mean over positive pairs of `max(margin + d(a, p) - d(a, n), 0)`, with plain
    (not squared) Euclidean distances. A batch with no positive pair gives 0 (tensorflow-addons
    returns NaN there).

    Args:
        y_true: Integer labels `[B]` or `[B, 1]`.
        y_pred: Embeddings `[B, d]`.
        margin: Defaults to `1.0`.

    Returns:
        A float32 scalar.
    """
    labels, embeddings = _prepare(y_true, y_pred)
    d = pairwise_distances(embeddings)
    positives = positive_mask(labels)
    negatives = negative_mask(labels)
    # Axes: [anchor, positive, negative].
    d_an = d[:, None, :]
    farther = tf.logical_and(negatives[:, None, :], d_an > d[:, :, None])
    row_max = tf.reduce_max(d, axis=1)[:, None, None]
    # Filling with the row maximum (not inf) keeps every value, and so every gradient, finite.
    outside = tf.reduce_min(tf.where(farther, d_an, row_max), axis=2)
    inside = tf.reduce_max(tf.where(negatives, d, tf.zeros_like(d)), axis=1, keepdims=True)
    semi_hard = tf.where(tf.reduce_any(farther, axis=2), outside, inside)
    pos = tf.cast(positives, tf.float32)
    per_pair = tf.nn.relu(margin + d - semi_hard) * pos
    return tf.math.divide_no_nan(tf.reduce_sum(per_pair), tf.reduce_sum(pos))


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False):
    """Batch-hard triplet loss, as tensorflow-addons computes it.

    Per anchor: the hardest positive `hp` (largest distance to a same-label item, 0 if none) and
    the hardest negative `hn` (smallest distance to a different-label item; the largest distance
    of the row if there is none, as in tensorflow-addons). The loss is the mean over all anchors
    of `max(hp - hn + margin, 0)`, or of `log(1 + exp(hp - hn))` when `soft=True` (which ignores
    `margin`). Plain (not squared) Euclidean distances.

    Args:
        y_true: Integer labels `[B]` or `[B, 1]`.
        y_pred: Embeddings `[B, d]`.
        margin: Defaults to `1.0`.
        soft: Use the soft-margin form. Defaults to `False`.

    Returns:
        A float32 scalar.
    """
    labels, embeddings = _prepare(y_true, y_pred)
    d = pairwise_distances(embeddings)
    hardest_pos = tf.reduce_max(tf.where(positive_mask(labels), d, tf.zeros_like(d)), axis=1)
    row_max = tf.reduce_max(d, axis=1, keepdims=True)
    hardest_neg = tf.reduce_min(
        tf.where(negative_mask(labels), d, tf.broadcast_to(row_max, tf.shape(d))), axis=1
    )
    if soft:
        per_anchor = tf.nn.softplus(hardest_pos - hardest_neg)
    else:
        per_anchor = tf.nn.relu(hardest_pos - hardest_neg + margin)
    return tf.math.divide_no_nan(
        tf.reduce_sum(per_anchor), tf.cast(tf.size(per_anchor), tf.float32)
    )


def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss over all pairs of the batch.

    Each unordered pair {i, j}, i != j, contributes `d^2` if it shares a label and
    `max(margin - d, 0)^2` otherwise; the loss is the plain mean over all `B (B - 1) / 2` pairs
    (positives and negatives are not averaged separately). A batch of one item gives 0.

    Args:
        y_true: Integer labels `[B]` or `[B, 1]`.
        y_pred: Embeddings `[B, d]`.
        margin: Distance beyond which negatives cost nothing. Defaults to `1.0`.

    Returns:
        A float32 scalar.
    """
    labels, embeddings = _prepare(y_true, y_pred)
    d2 = pairwise_distances(embeddings, squared=True)
    d = pairwise_distances(embeddings)
    ones = tf.ones_like(d)
    upper = tf.cast(tf.linalg.band_part(ones, 0, -1) - tf.linalg.band_part(ones, 0, 0), tf.bool)
    per_pair = tf.where(positive_mask(labels), d2, tf.square(tf.nn.relu(margin - d)))
    per_pair = tf.where(upper, per_pair, tf.zeros_like(per_pair))
    num_pairs = tf.reduce_sum(tf.cast(upper, tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(per_pair), num_pairs)


class _BatchLoss(keras.losses.Loss):
    """Base of the batch-level losses: one scalar per batch, labels kept as integers.

    Keras' `Loss.__call__` casts `y_true` to the loss dtype, which would corrupt class ids
    above 2048 under float16; this `__call__` hands the labels to `call` untouched.
    `reduction` is kept for config compatibility but has no effect: the loss is a scalar.

    A batch with a non-finite embedding gives NaN: the masks and maxima inside the losses would
    otherwise turn NaN distances into a finite value (1.0, 1.4) and hide a diverged network.
    """

    def __call__(self, y_true, y_pred, sample_weight=None, **kwargs):
        """The batch's loss; `kwargs` go to `call` (MarginLoss's learned `beta`)."""
        if sample_weight is not None:
            raise ValueError(
                f"{self.__class__.__name__} is computed over the whole batch and takes no "
                f"sample_weight. Received: sample_weight={sample_weight!r}"
            )
        with keras.name_scope(self.name):
            value = tf.cast(self.call(y_true, y_pred, **kwargs), tf.float32)
            finite = tf.reduce_all(tf.math.is_finite(tf.cast(y_pred, tf.float32)))
            value = tf.where(finite, value, tf.constant(float("nan")))
            return tf.cast(value, self.dtype)


@keras.saving.register_keras_serializable(package="dnc_keras")
class MarginLoss(_BatchLoss):
    """Margin loss with distance-weighted sampling (Wu et al., ICCV 2017).

    For each (anchor, positive) pair one negative is drawn by
    `dnc_keras.mining.DistanceWeightedSampler`; then
    `l+ = max(0, d(a, p) - beta + alpha)`, `l- = max(0, beta - d(a, n) + alpha)` and
    `L = (sum(l+) + sum(l-) + nu * |beta|) / (number of non-zero terms)`, 0 when no term is
    non-zero. Embeddings are expected to be L2-normalised (distances in [0, 2]).

    Args:
        alpha: Margin around the boundary. Defaults to `0.2`.
        beta: Boundary between positive and negative distances (fixed, as in both official
            runs), or its starting value when learned. Defaults to `1.2`.
        learn_beta: Whether beta is learned, as Wu et al. do. A loss holds no variables: a
            `DnCModel` compiled with this loss keeps one beta per learner and one for the
            conquered embedding, trains them with their own optimizer, and passes the current
            learner's to `call(..., beta=)`. Called alone the loss uses `beta`. Defaults to
            `False`.
        nu: Weight of the `|beta|` regulariser. Defaults to `0.0`.
        cutoff: Sampler: distances are clamped below at this value. Defaults to `0.5`.
        nonzero_loss_cutoff: Sampler: negatives this far or farther are not sampled unless no
            nearer one exists. Defaults to `1.4` (`alpha + beta`).
        dimension: Sampler: the dimension `n` of the weights; `None` counts the non-zero
            coordinates of the batch (d/K for a zero-padded fixed block). Defaults to `None`.
        seed: Optional int making the sampled triplets reproducible. Defaults to `None`.
        name: Optional name. Defaults to `"margin_loss"`.
        reduction: Kept for Keras compatibility; no effect. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the returned value; computation is always float32. Defaults to `None`.

    Example:

    >>> loss = MarginLoss(seed=0)
    >>> x = tf.math.l2_normalize(tf.random.normal([8, 16]), axis=1)
    >>> value = loss([0, 0, 1, 1, 2, 2, 3, 3], x)
    """

    MARGIN_ARGUMENT = "alpha"  # what `dnc-keras train --margin` sets

    def __init__(
        self,
        alpha=0.2,
        beta=1.2,
        nu=0.0,
        cutoff=0.5,
        nonzero_loss_cutoff=1.4,
        dimension=None,
        seed=None,
        learn_beta=False,
        name="margin_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.learn_beta = bool(learn_beta)
        self.nu = float(nu)
        self.sampler = DistanceWeightedSampler(
            cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff, dimension=dimension, seed=seed
        )

    def call(self, y_true, y_pred, beta=None):
        """The loss with boundary `beta` (a learned scalar tensor), `self.beta` when None."""
        labels, embeddings = _prepare(y_true, y_pred)
        d = pairwise_distances(embeddings)
        n = self.sampler.dimension
        if n is None:
            n = effective_dimension(embeddings)
        triplets = self.sampler.sample_from_distances(d, labels, n)
        beta = self.beta if beta is None else tf.cast(beta, tf.float32)
        return margin_loss_from_triplets(d, *triplets, alpha=self.alpha, beta=beta, nu=self.nu)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "learn_beta": self.learn_beta,
                "nu": self.nu,
                **self.sampler.get_config(),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="dnc_keras")
class TripletSemiHardLoss(_BatchLoss):
    """Triplet loss with semi-hard negative mining (tensorflow-addons semantics).

    See `triplet_semihard_loss`. Differs from tensorflow-addons only where it returns NaN (a
    batch without any positive pair): this returns 0.

    Args:
        margin: Defaults to `1.0`.
        name: Optional name. Defaults to `"triplet_semihard_loss"`.
        reduction: Kept for Keras compatibility; no effect. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the returned value; computation is always float32. Defaults to `None`.

    Example:

    >>> loss = TripletSemiHardLoss()
    >>> value = loss([0, 0, 1], [[0.0, 1.0], [0.0, 0.5], [1.0, 0.0]])
    """

    MARGIN_ARGUMENT = "margin"  # what `dnc-keras train --margin` sets

    def __init__(
        self, margin=1.0, name="triplet_semihard_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return triplet_semihard_loss(y_true, y_pred, margin=self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="dnc_keras")
class TripletHardLoss(_BatchLoss):
    """Batch-hard triplet loss (tensorflow-addons semantics).

    See `triplet_hard_loss`.

    Args:
        margin: Defaults to `1.0`.
        soft: Use `log(1 + exp(hp - hn))` instead of the hinge. Defaults to `False`.
        name: Optional name. Defaults to `"triplet_hard_loss"`.
        reduction: Kept for Keras compatibility; no effect. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the returned value; computation is always float32. Defaults to `None`.

    Example:

    >>> loss = TripletHardLoss(margin=0.5)
    >>> value = loss([0, 0, 1], [[0.0, 1.0], [0.0, 0.5], [1.0, 0.0]])
    """

    MARGIN_ARGUMENT = "margin"  # what `dnc-keras train --margin` sets

    def __init__(
        self,
        margin=1.0,
        soft=False,
        name="triplet_hard_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        return triplet_hard_loss(y_true, y_pred, margin=self.margin, soft=self.soft)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "soft": self.soft}


@keras.saving.register_keras_serializable(package="dnc_keras")
class ContrastiveLoss(_BatchLoss):
    """Contrastive loss over all pairs of the batch.

    See `contrastive_loss`: positives cost `d^2`, negatives `max(margin - d, 0)^2`, averaged over
    all `B (B - 1) / 2` unordered pairs.

    Args:
        margin: Defaults to `1.0`.
        name: Optional name. Defaults to `"contrastive_loss"`.
        reduction: Kept for Keras compatibility; no effect. Defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the returned value; computation is always float32. Defaults to `None`.

    Example:

    >>> loss = ContrastiveLoss(margin=1.0)
    >>> value = loss([0, 0, 1], [[0.0, 1.0], [0.0, 0.5], [1.0, 0.0]])
    """

    MARGIN_ARGUMENT = "margin"  # what `dnc-keras train --margin` sets

    def __init__(
        self, margin=1.0, name="contrastive_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, margin=self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}
