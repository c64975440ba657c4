"""SubspaceMasks: the per-learner subspaces of the embedding (fixed blocks or learned masks)."""

import keras
import tensorflow as tf

SUBSPACE_MODES = ("fixed", "learned")
INFERENCE_MODES = ("full", "masked")


@keras.saving.register_keras_serializable(package="dnc_keras")
class SubspaceMasks(keras.layers.Layer):
    """Gives each of K learners its own subspace of a d-dimensional embedding.

    `mode="fixed"` (CVPR 2019): with `active_learners` = K, learner k owns the contiguous
    block of d/K coordinates starting at k*d/K. Dividing K -> 2K halves every block, so learner
    c's block becomes the blocks of its children 2c and 2c+1.
    `mode="learned"` (TPAMI 2021): learner k has a mask m_k in R^d, initialised to ones, and
    sees normalize(ReLU(m_k) * z); `overlap_penalty()` keeps the masks apart.

    A fixed block is expressed as a 0/1 mask over all d coordinates, so both modes share one code
    path and every learner's sub-embedding has the static shape [batch, d]: distances are those
    of the d/K-dimensional block, and the variable set and traced functions never change as K
    grows. All `max_learners` masks exist from the start; `active_learners` counts those in use.

    Args:
        embedding_dim: width d of the embedding z.
        max_learners: K_final, the most learners that will ever be active. Defaults to `1`.
        mode: `"fixed"` or `"learned"`. Defaults to `"fixed"`.
        overlap_weight: lambda of the overlap penalty (learned masks). Defaults to `0.01`.
        inference: `"full"` (normalize(z), what the official code uses at test time) or
            `"masked"` (fixed: concatenated block-normalised blocks / sqrt(K); learned:
            normalize(z * mean_k ReLU(m_k))). Defaults to `"full"`.
        initial_learners: K at the start (1 for progressive division). Defaults to `max_learners`.

    Call:
        `layer(z)` returns the inference embedding [batch, d] (L2-normalised).
    """

    def __init__(self, embedding_dim, max_learners=1, mode="fixed", overlap_weight=0.01,
                 inference="full", initial_learners=None, **kwargs):
        # Float32 whatever the global policy: under mixed precision the masks, the learners'
        # sub-embeddings and the overlap penalty stay float32 (Keras would otherwise run this
        # layer, and read its masks, in float16).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in SUBSPACE_MODES:
            raise ValueError(f"mode must be one of {SUBSPACE_MODES}. Received: mode={mode!r}")
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"inference must be one of {INFERENCE_MODES}. Received: inference={inference!r}")
        initial_learners = max_learners if initial_learners is None else initial_learners
        _check_learner_count(embedding_dim, max_learners, initial_learners, mode)
        self.embedding_dim = int(embedding_dim)
        self.max_learners = int(max_learners)
        self.mode = mode
        self.overlap_weight = float(overlap_weight)
        self.inference = inference
        self.initial_learners = int(initial_learners)
        self.masks = self.add_weight(
            name="masks", shape=(self.max_learners, self.embedding_dim), initializer="ones",
            trainable=(mode == "learned"))
        self.active_learners = self.add_weight(
            name="active_learners", shape=(), dtype="int32", trainable=False,
            initializer=keras.initializers.Constant(self.initial_learners))

    # -- per-learner view -------------------------------------------------------------------
    def learner_masks(self):
        """[max_learners, d] non-negative masks; rows >= active_learners are meaningless."""
        if self.mode == "learned":
            return tf.nn.relu(tf.convert_to_tensor(self.masks))
        k = tf.cast(self.active_learners, tf.int32)
        block = tf.range(self.embedding_dim) // (self.embedding_dim // k)
        return tf.cast(tf.equal(tf.range(self.max_learners)[:, None], block[None, :]), tf.float32)

    def learner_embedding(self, z, learner):
        """normalize(mask_learner * z): the L2-normalised sub-embedding that learner sees."""
        mask = tf.gather(self.learner_masks(), tf.cast(learner, tf.int32))
        return tf.math.l2_normalize(tf.cast(z, tf.float32) * mask, axis=-1)

    def learner_dim(self, learner):
        """Dimension of the learner's subspace (its block width, or the mask's support)."""
        mask = tf.gather(self.learner_masks(), tf.cast(learner, tf.int32))
        return tf.reduce_sum(tf.cast(mask > 0, tf.int32))

    def overlap_penalty(self):
        """lambda * mean over ordered pairs i != j of cos(ReLU(m_i), ReLU(m_j)), active learners."""
        if self.mode != "learned":
            return tf.constant(0.0)
        k = tf.cast(self.active_learners, tf.int32)
        m = tf.math.l2_normalize(self.learner_masks(), axis=-1)
        cos = tf.matmul(m, m, transpose_b=True)
        active = tf.cast(tf.range(self.max_learners) < k, tf.float32)
        pair = active[:, None] * active[None, :] * (1.0 - tf.eye(self.max_learners))
        pairs = tf.reduce_sum(pair)
        return self.overlap_weight * tf.math.divide_no_nan(tf.reduce_sum(cos * pair), pairs)

    # -- growing K ----------------------------------------------------------------------------
    def divide(self):
        """Doubles K: learner c's children 2c and 2c+1 inherit its mask (fixed: its halved block)."""
        k = int(self.active_learners.numpy())
        if 2 * k > self.max_learners:
            raise ValueError(f"Cannot divide {k} learners: 2K = {2 * k} exceeds "
                             f"max_learners={self.max_learners}")
        if self.mode == "learned":
            parents = tf.repeat(tf.range(k), 2)
            rest = tf.range(2 * k, self.max_learners)
            self.masks.assign(tf.gather(self.masks, tf.concat([parents, rest], 0)))
        self.active_learners.assign(2 * k)

    def set_active_learners(self, k):
        """Sets K directly (for restoring a run); masks are left as they are."""
        _check_learner_count(self.embedding_dim, self.max_learners, k, self.mode)
        self.active_learners.assign(int(k))

    # -- inference ----------------------------------------------------------------------------
    def call(self, z):
        z = tf.cast(z, tf.float32)
        if self.inference == "full":
            return tf.math.l2_normalize(z, axis=-1)
        k = tf.cast(self.active_learners, tf.int32)
        active = tf.cast(tf.range(self.max_learners) < k, tf.float32)[:, None]
        masks = self.learner_masks() * active
        if self.mode == "learned":
            weight = tf.reduce_sum(masks, 0) / tf.cast(k, tf.float32)
            return tf.math.l2_normalize(z * weight, axis=-1)
        blocks = tf.math.l2_normalize(z[:, None, :] * masks[None], axis=-1)
        return tf.reduce_sum(blocks, axis=1) / tf.sqrt(tf.cast(k, tf.float32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, max_learners=self.max_learners,
                      mode=self.mode, overlap_weight=self.overlap_weight,
                      inference=self.inference, initial_learners=self.initial_learners)
        return config


def _check_learner_count(embedding_dim, max_learners, k, mode):
    if max_learners < 1 or k < 1 or k > max_learners:
        raise ValueError(f"Need 1 <= active learners <= max_learners. Received: "
                         f"active={k}, max_learners={max_learners}")
    for count in (max_learners, k):
        if mode == "fixed" and embedding_dim % count:
            raise ValueError(f"Fixed blocks need embedding_dim divisible by the number of "
                             f"learners. Received: embedding_dim={embedding_dim}, "
                             f"learners={count}")
