"""Distance-weighted negative sampling.

Wu, Manmatha, Smola, Krahenbuhl, "Sampling Matters in Deep Embedding Learning", ICCV 2017.

For L2-normalised points spread uniformly on the unit sphere in R^n, pairwise distances D follow
q(D) ~ D^(n-2) (1 - D^2/4)^((n-3)/2). Sampling negatives with weight 1/q(D) spreads the chosen
negatives over all distances instead of concentrating them near sqrt(2).

The weights are computed and normalised per row in log space, and the draw is a Gumbel top-k,
so nothing underflows: the sampler draws from the exact distribution. For n >= 128 that
distribution itself is so peaked on the nearest negative that sampling amounts to hardest-negative
mining, which is why the divide-and-conquer subspace dimension d/K matters (method.md, section 4).
"""

import keras
import numpy as np
import tensorflow as tf

from dnc_keras.distances import _as_embeddings
from dnc_keras.distances import _as_labels
from dnc_keras.distances import negative_mask
from dnc_keras.distances import pairwise_distances
from dnc_keras.distances import positive_mask

# Keeps log(1 - D^2/4) finite for D at (or, without normalisation, beyond) 2; same floor as the
# official CompVis code.
_LOG_FLOOR = 1e-8
_TINY = float(np.finfo(np.float32).tiny)


def _check_args(cutoff, nonzero_loss_cutoff, dimension):
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 (its log is taken). Received: cutoff={cutoff}")
    if not nonzero_loss_cutoff > cutoff:
        raise ValueError(
            "nonzero_loss_cutoff must be greater than cutoff, or no negative could ever get a "
            f"weight. Received: cutoff={cutoff}, nonzero_loss_cutoff={nonzero_loss_cutoff}"
        )
    is_int = isinstance(dimension, (int, np.integer)) and not isinstance(dimension, bool)
    if dimension is not None and not (is_int and dimension >= 1):
        raise ValueError(
            f"dimension must be None or an integer >= 1. Received: dimension={dimension!r}"
        )


def effective_dimension(embeddings):
    """Number of embedding coordinates that are not zero for every item of the batch.

    This is the `n` the sampler uses when `dimension=None`: a learner that owns a fixed block of
    d/K coordinates, passed as a d-wide vector with the other coordinates zeroed, gets n = d/K.
    A coordinate that happens to be exactly zero over the whole batch is not counted either,
    which only matters for tiny batches; pass `dimension` explicitly to avoid the guess.

    Args:
        embeddings: Tensor `[B, d]`.

    Returns:
        A float32 scalar tensor.
    """
    x = _as_embeddings(embeddings)
    return tf.reduce_sum(tf.cast(tf.reduce_any(tf.not_equal(x, 0.0), axis=0), tf.float32))


def _log_probs_from_distances(distances, labels, dimension, cutoff, nonzero_loss_cutoff):
    """Row-normalised log sampling probabilities `[B, B]`, -inf where a pick is impossible."""
    distances = tf.stop_gradient(tf.convert_to_tensor(distances, tf.float32))
    n = tf.cast(dimension, tf.float32)
    clamped = tf.maximum(distances, cutoff)
    log_weights = (2.0 - n) * tf.math.log(clamped) - ((n - 3.0) / 2.0) * tf.math.log(
        tf.maximum(1.0 - 0.25 * tf.square(clamped), _LOG_FLOOR)
    )
    negatives = negative_mask(labels)
    weighted = tf.logical_and(negatives, distances < nonzero_loss_cutoff)
    neg_inf = tf.fill(tf.shape(distances), -np.inf)

    log_weights = tf.where(weighted, log_weights, neg_inf)
    has_weight = tf.reduce_any(weighted, axis=1, keepdims=True)
    log_norm = tf.where(has_weight, tf.reduce_logsumexp(log_weights, axis=1, keepdims=True), 0.0)
    weighted_log_probs = log_weights - log_norm

    # Fallback: early in training nearly all negatives sit near sqrt(2) > 1.4; such a row is
    # sampled uniformly over its negatives (never over self or positives).
    num_negatives = tf.reduce_sum(tf.cast(negatives, tf.float32), axis=1, keepdims=True)
    uniform_log_probs = tf.where(
        negatives, -tf.math.log(tf.maximum(num_negatives, 1.0)) + tf.zeros_like(distances), neg_inf
    )
    return tf.where(has_weight, weighted_log_probs, uniform_log_probs)


def distance_weighted_log_probs(
    embeddings, labels, cutoff=0.5, nonzero_loss_cutoff=1.4, dimension=None
):
    """Log-probabilities with which the distance-weighted sampler picks each negative.

    Row `a` is the distribution over negatives for anchor `a`: weight
    `D^(2-n) (1 - D^2/4)^(-(n-3)/2)` with `D = max(d(a, j), cutoff)` for negatives with
    `d(a, j) < nonzero_loss_cutoff`, normalised over the row; rows where no negative is that
    close are uniform over all their negatives. Self, positives and excluded negatives get
    `-inf`; a row is all `-inf` only if the anchor has no negative at all.

    Args:
        embeddings: Tensor `[B, d]`, assumed L2-normalised.
        labels: Integer tensor `[B]` or `[B, 1]`.
        cutoff: Distances below it are clamped to it before weighting. Defaults to `0.5`.
        nonzero_loss_cutoff: Negatives at this distance or farther get weight 0; with the
            margin loss it is `alpha + beta`. Defaults to `1.4`.
        dimension: The `n` of the formula. `None` uses `effective_dimension(embeddings)`.
            Defaults to `None`.

    Returns:
        A float32 tensor `[B, B]`, no gradient.
    """
    _check_args(cutoff, nonzero_loss_cutoff, dimension)
    x = _as_embeddings(embeddings)
    n = effective_dimension(x) if dimension is None else dimension
    return _log_probs_from_distances(
        pairwise_distances(x), labels, n, cutoff, nonzero_loss_cutoff
    )


def _uniform(shape, seed):
    """Uniform noise in [tiny, 1) from any supported kind of seed."""
    if seed is None:
        return tf.random.uniform(shape, minval=_TINY, maxval=1.0, dtype=tf.float32)
    if isinstance(seed, (np.integer,)):
        seed = int(seed)
    if isinstance(seed, (int, keras.random.SeedGenerator)):
        return keras.random.uniform(shape, minval=_TINY, maxval=1.0, dtype="float32", seed=seed)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank is not None and seed.shape != (2,):
        raise ValueError(
            "seed must be None, an int, a keras.random.SeedGenerator or an integer tensor of "
            f"shape [2]. Received: seed with shape {seed.shape}"
        )
    seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), tf.int32.max), tf.int32)
    return tf.random.stateless_uniform(shape, seed=seed, minval=_TINY, maxval=1.0)


def _sample_from_distances(distances, labels, dimension, cutoff, nonzero_loss_cutoff, seed):
    """The sampler on a precomputed distance matrix; see `distance_weighted_sampling`."""
    labels = _as_labels(labels)
    distances = tf.convert_to_tensor(distances, tf.float32)
    n_labels = tf.compat.dimension_value(labels.shape[0])
    n_rows = tf.compat.dimension_value(distances.shape[0])
    if n_labels is not None and n_rows is not None and n_labels != n_rows:
        raise ValueError(
            f"labels must hold one label per row of the batch. Received: {n_labels} labels "
            f"for a batch of {n_rows}"
        )
    log_probs = _log_probs_from_distances(
        distances, labels, dimension, cutoff, nonzero_loss_cutoff
    )
    batch = tf.shape(labels)[0]
    # An anchor has at most B - 1 positives; this bound keeps the output shape static.
    k = max(n_labels - 1, 0) if n_labels is not None else tf.maximum(batch - 1, 0)

    positives = positive_mask(labels)
    columns = tf.range(batch, dtype=tf.int32)[None, :]
    # Positives first, in column order: top_k of a score that is large only for positives.
    pos_score = tf.where(positives, batch - columns, -1 - columns)
    positive_idx = tf.math.top_k(pos_score, k=k).indices
    num_positives = tf.reduce_sum(tf.cast(positives, tf.int32), axis=1, keepdims=True)
    slot = tf.range(k, dtype=tf.int32)[None, :]

    # Gumbel top-k: the first m keys are m draws without replacement from exp(log_probs).
    gumbel = -tf.math.log(-tf.math.log(_uniform(tf.shape(log_probs), seed)))
    drawn = tf.math.top_k(log_probs + gumbel, k=k).indices
    num_drawable = tf.reduce_sum(tf.cast(log_probs > -np.inf, tf.int32), axis=1, keepdims=True)
    # Fewer drawable negatives than positives: reuse the draws in order, so every positive pair
    # still gets a triplet (the official code samples with replacement throughout).
    reuse = tf.math.floormod(slot, tf.maximum(num_drawable, 1))
    negative_idx = tf.gather(drawn, reuse, batch_dims=1)

    valid = tf.logical_and(slot < num_positives, num_drawable > 0)
    anchor_idx = tf.broadcast_to(tf.range(batch, dtype=tf.int32)[:, None], tf.shape(valid))
    # Padding slots point at the anchor itself, so they can never pass for a real pair.
    positive_idx = tf.where(valid, positive_idx, anchor_idx)
    negative_idx = tf.where(valid, negative_idx, anchor_idx)
    flat = lambda t: tf.reshape(t, [-1])  # noqa: E731
    return flat(anchor_idx), flat(positive_idx), flat(negative_idx), flat(valid)


def distance_weighted_sampling(
    embeddings, labels, cutoff=0.5, nonzero_loss_cutoff=1.4, dimension=None, seed=None
):
    """Samples one negative per (anchor, positive) pair by distance-weighted sampling.

    For each anchor with q positives, q negatives are drawn without replacement (Gumbel top-k)
    from `distance_weighted_log_probs`; the j-th positive of the anchor (in batch order) is
    paired with the j-th drawn negative. If the anchor has fewer drawable negatives than
    positives, the draws are reused in order. Anchors without positives or without negatives
    give no triplet.

    The output has a fixed length `B * (B - 1)` (slot `a * (B - 1) + j` is the j-th positive of
    anchor `a`) with a validity mask, so it works inside `tf.function` without retracing.

    Args:
        embeddings: Tensor `[B, d]`, assumed L2-normalised. No gradient flows through sampling.
        labels: Integer tensor `[B]` or `[B, 1]`.
        cutoff: Distances below it are clamped to it before weighting. Defaults to `0.5`.
        nonzero_loss_cutoff: Negatives at this distance or farther are not sampled unless the
            anchor has no nearer negative. Defaults to `1.4`.
        dimension: The `n` of the weight formula. `None` counts the coordinates that are not
            zero over the whole batch (`effective_dimension`), so a fixed block of d/K
            coordinates inside a zero-padded d-vector gets n = d/K. Defaults to `None`.
        seed: `None` (fresh randomness from `tf.random`), an int (the same draw every call),
            a `keras.random.SeedGenerator` (a new draw each call, reproducible sequence) or an
            integer tensor `[2]` (stateless). Defaults to `None`.

    Returns:
        Tuple `(anchor_idx, positive_idx, negative_idx, valid_mask)`: three int32 tensors and
        one bool tensor, each of shape `[B * (B - 1)]`. Entries where `valid_mask` is False are
        padding (all three indices equal the anchor) and must be ignored.

    Example:

    >>> x = tf.math.l2_normalize(tf.random.normal([8, 16]), axis=1)
    >>> a, p, n, valid = distance_weighted_sampling(x, [0, 0, 1, 1, 2, 2, 3, 3], seed=1)
    >>> int(tf.reduce_sum(tf.cast(valid, tf.int32)))
    8
    """
    _check_args(cutoff, nonzero_loss_cutoff, dimension)
    x = _as_embeddings(embeddings)
    n = effective_dimension(x) if dimension is None else dimension
    return _sample_from_distances(
        tf.stop_gradient(pairwise_distances(x)), labels, n, cutoff, nonzero_loss_cutoff, seed
    )


@keras.saving.register_keras_serializable(package="dnc_keras")
class DistanceWeightedSampler:
    """Distance-weighted sampler of (anchor, positive, negative) triplets.

    A stateful wrapper of `distance_weighted_sampling`: with an integer `seed` it owns a
    `keras.random.SeedGenerator`, so successive calls draw different triplets in a reproducible
    sequence; with `seed=None` it uses `tf.random` and is not reproducible.

    Args:
        cutoff: Distances below it are clamped to it before weighting. Defaults to `0.5`.
        nonzero_loss_cutoff: Negatives at this distance or farther are not sampled unless the
            anchor has no nearer negative. Defaults to `1.4` (alpha + beta of the margin loss).
        dimension: The `n` of the weight formula; `None` counts the non-zero coordinates of
            the batch (d/K for a zero-padded fixed block). Defaults to `None`.
        seed: Optional int. Defaults to `None`.

    Example:

    >>> sampler = DistanceWeightedSampler(seed=0)
    >>> x = tf.math.l2_normalize(tf.random.normal([6, 4]), axis=1)
    >>> a, p, n, valid = sampler(x, [0, 0, 1, 1, 2, 2])
    """

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, dimension=None, seed=None):
        _check_args(cutoff, nonzero_loss_cutoff, dimension)
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be None or an int. Received: seed={seed!r}")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.dimension = None if dimension is None else int(dimension)
        self.seed = None if seed is None else int(seed)
        self._seed_generator = None if seed is None else keras.random.SeedGenerator(int(seed))

    def sample_from_distances(self, distances, labels, dimension, seed=None):
        """Samples triplets from a precomputed `[B, B]` distance matrix.

        Args:
            distances: Float tensor `[B, B]` of Euclidean distances (no gradient is taken).
            labels: Integer tensor `[B]` or `[B, 1]`.
            dimension: The `n` of the weight formula, used when `self.dimension` is `None`.
            seed: Overrides the sampler's own seed for this call (see
                `distance_weighted_sampling`). Defaults to `None`.

        Returns:
            Same as `distance_weighted_sampling`.
        """
        n = self.dimension if self.dimension is not None else dimension
        return _sample_from_distances(
            tf.stop_gradient(distances),
            labels,
            n,
            self.cutoff,
            self.nonzero_loss_cutoff,
            self._seed_generator if seed is None else seed,
        )

    def __call__(self, embeddings, labels, seed=None):
        """Samples triplets; see `distance_weighted_sampling` for the returned tuple."""
        x = _as_embeddings(embeddings)
        n = self.dimension if self.dimension is not None else effective_dimension(x)
        return self.sample_from_distances(pairwise_distances(x), labels, n, seed=seed)

    def get_config(self):
        return {
            "cutoff": self.cutoff,
            "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
            "dimension": self.dimension,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
