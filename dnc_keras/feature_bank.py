"""FeatureBank: the backbone features that the train steps computed, kept for re-clustering.

A re-clustering embeds every training image once; with T = 2 that pass alone costs about 16% of
the training between two re-clusterings (docs/performance.md). The train step already computes
the features of every image it trains on, so the bank keeps the latest one per image and a
re-clustering embeds afresh only the images no step has seen since the previous one.

The features differ from a separate inference pass in three ways, which is why this is opt-in
(`ReclusterCallback(feature_source="training")`): they come from the training-mode network
(batch statistics in a trainable BatchNorm, dropout), from augmented images, and from the model
as it was when the image was last drawn (up to `period` epochs ago).
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

    def write(self, indices, features):
        """Stores a batch's features at their image indices (graph-safe; no gradient)."""
        indices = tf.reshape(tf.cast(indices, tf.int64), [-1, 1])
        values = tf.math.l2_normalize(tf.cast(tf.stop_gradient(features), tf.float32), axis=-1)
        self.features.scatter_nd_update(indices, values)
        self.seen.scatter_nd_update(indices, tf.ones([tf.shape(indices)[0]], tf.bool))

    def read(self, embed_unseen):
        """All N features: stored ones, and `embed_unseen(indices)` for the rest; then forgets
        what it has seen, so the next read holds only features newer than this one.

        Returns:
            (features [N, dim] float32, number of images embedded afresh).
        """
        features = self.features.numpy()
        unseen = np.flatnonzero(~self.seen.numpy())
        if len(unseen):
            fresh = np.asarray(embed_unseen(unseen), np.float32)
            if fresh.shape != (len(unseen), self.dim):
                raise ValueError(f"embed_unseen returned shape {fresh.shape}; expected "
                                 f"{(len(unseen), self.dim)}")
            features[unseen] = fresh
        self.seen.assign(tf.zeros_like(self.seen))
        return features, len(unseen)
