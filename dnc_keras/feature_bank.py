"""FeatureBank: the backbone features that the train steps computed, kept for re-clustering.

A re-clustering embeds every training image once; with T = 2 that pass alone costs about 16% of
the training between two re-clusterings (docs/performance.md). The train step already computes
the features of every image it trains on, so the bank keeps the latest one per image and a
re-clustering embeds afresh only the images whose row is too old: a row not rewritten since the
previous re-clustering is used once more, then embedded afresh. Every row a re-clustering uses
is therefore at most two periods old, and an image no batch can draw (its class has a single
image in its cluster: `clustering.drop_single_image_classes`) costs a pass every second
re-clustering instead of every one.

The features differ from a separate inference pass in three ways
(`DnCScheduleCallback(feature_source="training")`): they come from the training-mode network
(batch statistics in a trainable BatchNorm, dropout), from augmented images, and from the model
as it was when the image was last drawn (up to `2 period` epochs ago). With batch
renormalisation the first difference goes (a train step normalises by the moving statistics,
as inference does); that is where a run uses the bank by default
(`dnc_keras.training.config`), and where it was measured non-inferior to the full pass.
"""

import numpy as np
import tensorflow as tf


class FeatureBank:
    """Latest L2-normalised backbone features per training image, written inside train steps.

    Args:
        num_images: N, the training images the sampler indexes.
        dim: width of the backbone features.
    """

    def __init__(self, num_images, dim):
        if num_images < 1 or dim < 1:
            raise ValueError(f"FeatureBank needs num_images >= 1 and dim >= 1. Received: "
                             f"num_images={num_images}, dim={dim}")
        self.num_images = int(num_images)
        self.dim = int(dim)
        self.features = tf.Variable(tf.zeros([self.num_images, self.dim]), trainable=False,
                                    name="feature_bank")
        self.seen = tf.Variable(tf.zeros([self.num_images], tf.bool), trainable=False,
                                name="feature_bank_seen")
        # Rows that were new at the previous read (written by a step, or embedded afresh):
        # those may serve one more read unchanged. A tf.Variable so that checkpoints keep it.
        self.new_at_last_read = tf.Variable(tf.zeros([self.num_images], tf.bool),
                                            trainable=False, name="feature_bank_new_at_last_read")

    def write(self, indices, features):
        """Stores a batch's features at their image indices (graph-safe; no gradient)."""
        indices = tf.reshape(tf.cast(indices, tf.int64), [-1, 1])
        values = tf.math.l2_normalize(tf.cast(tf.stop_gradient(features), tf.float32), axis=-1)
        self.features.scatter_nd_update(indices, values)
        self.seen.scatter_nd_update(indices, tf.ones([tf.shape(indices)[0]], tf.bool))

    def read(self, embed_unseen):
        """All N features: rows written since the previous read; rows new at the previous read
        and not rewritten since, once more; `embed_unseen(indices)` for the rest. Then forgets
        what it has seen, so the next read tells new rows from old ones.

        Returns:
            (features [N, dim] float32, number of images embedded afresh).
        """
        features = self.features.numpy()
        seen = self.seen.numpy()
        stale = np.flatnonzero(~seen & ~self.new_at_last_read.numpy())
        if len(stale):
            fresh = np.asarray(embed_unseen(stale), np.float32)
            if fresh.shape != (len(stale), self.dim):
                raise ValueError(f"embed_unseen returned shape {fresh.shape}; expected "
                                 f"{(len(stale), self.dim)}")
            features[stale] = fresh
            self.features.scatter_nd_update(stale.reshape(-1, 1), fresh)
            seen[stale] = True
        self.new_at_last_read.assign(seen)
        self.seen.assign(tf.zeros_like(self.seen))
        return features, len(stale)
