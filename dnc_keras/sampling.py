"""Cluster-aware batches: one cluster per batch, round-robin over clusters, P x M inside.

The sampler holds the current cluster assignment; callbacks write a new one after each
re-clustering or division, and the next epoch's batches follow it. `as_dataset` wraps it in a
`tf.data.Dataset` whose generator is re-run every epoch, so `model.fit` sees the new clusters
without rebuilding anything.
"""

import warnings

import numpy as np
import tensorflow as tf

from dnc_keras.clustering import drop_single_image_classes

# Purpose of a random stream, folded into the run's seed: augmentation draws are independent
# of the batch draws.
AUGMENT_STREAM = 1

class ClusterBatchSampler:
    """Draws class-balanced P x M batches, each from one cluster, clusters in round-robin.

    Inside a cluster, P distinct classes are drawn, M images each (with replacement for a
    class with fewer than M images); a cluster with fewer than P classes uses all of them with
    more images each, so every batch has exactly P * M images and traced functions never see
    a new shape. A cluster that cannot form a batch with at least 2 classes is skipped with a
    warning.

    An epoch has a fixed number of steps, by default N // (P * M) (one pass over the training
    images in expectation), whatever K and the cluster sizes are. The papers' epoch is K x the
    batches of the largest (or smallest) cluster, which changes at every division and
    re-clustering; Keras's `fit` fixes an epoch's length for the whole call, and a fixed length
    also compares runs with different K at equal gradient steps.

    Args:
        labels: int class labels of the training images, shape [N].
        classes_per_batch: P. Defaults to `20` (CVPR; TPAMI uses 40).
        samples_per_class: M. Defaults to `4` (CVPR; TPAMI uses 2).
        seed: seed of the batch draws; epoch e uses seed + e.
        steps_per_epoch: steps per epoch. Defaults to `None`: N // (P * M), at least 1.
    """

    def __init__(self, labels, classes_per_batch=20, samples_per_class=4, seed=0,
                 steps_per_epoch=None):
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if classes_per_batch < 2 or samples_per_class < 1:
            raise ValueError("Need classes_per_batch >= 2 and samples_per_class >= 1. Received: "
                             f"P={classes_per_batch}, M={samples_per_class}")
        _check_classes(self.labels)
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        self.steps = (max(1, len(self.labels) // self.batch_size) if steps_per_epoch is None
                      else int(steps_per_epoch))
        if self.steps < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}")
        self.epoch = 0
        self.updated_at_epoch = None
        self.single_cluster = False
        self.set_clusters(np.zeros(len(self.labels), np.int64), 1)

    @property
    def batch_size(self):
        return self.classes_per_batch * self.samples_per_class

    def set_clusters(self, assignment, num_clusters, epoch=None):
        """Installs a new assignment (cluster id per image, -1 for none) with K clusters."""
        assignment = np.asarray(assignment).astype(np.int64).reshape(-1)
        if len(assignment) != len(self.labels):
            raise ValueError(f"assignment has {len(assignment)} entries for "
                             f"{len(self.labels)} images")
        self.assignment = assignment
        self.num_clusters = int(num_clusters)
        self.updated_at_epoch = epoch
        usable = drop_single_image_classes(assignment, self.labels)
        self._members = [_class_members(np.flatnonzero(usable == c), self.labels)
                         for c in range(self.num_clusters)]

    def cluster_sizes(self):
        """(images, classes) per cluster, after dropping classes with one image there."""
        return [(sum(len(v) for v in m.values()), len(m)) for m in self._members]

    def epoch_batches(self):
        """One epoch of (indices [P*M], learner id) pairs; advances the epoch counter."""
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        clusters = [c for c, (_, k) in enumerate(self.cluster_sizes()) if k >= 2]
        for c, (_, k) in enumerate(self.cluster_sizes()):
            if k < 2:
                warnings.warn(f"Cluster {c} has {k} usable class(es); it is skipped this epoch")
        if not clusters:
            raise ValueError("No cluster has 2 classes with 2 images each: cannot form a batch")
        for step in range(self.steps):
            c = clusters[step % len(clusters)]
            yield self._draw(self._members[c], rng), c

    def _draw(self, members, rng):
        classes = np.array(sorted(members))
        chosen = rng.choice(classes, size=min(self.classes_per_batch, len(classes)),
                            replace=False)
        counts = np.full(len(chosen), self.batch_size // len(chosen))
        counts[: self.batch_size - counts.sum()] += 1
        picks = [rng.choice(members[cls], size=n, replace=len(members[cls]) < n)
                 for cls, n in zip(chosen, counts)]
        return np.concatenate(picks)

    def as_dataset(self, images, augment=None, prefetch=2):
        """A tf.data pipeline of ({"images", "learner", "indices"}, labels) batches over
        `images`; "indices" are the images' rows, for `dnc_keras.feature_bank.FeatureBank`.

        Args:
            images: array [N, H, W, C] (float32 in [0, 1]) aligned with `labels`.
            augment: optional function (images, seed) -> images applied per batch (training
                only), e.g. `dnc_keras.augmentation.RandomAffine()`; `seed` is an int64 [2]
                stateless seed of the sampler's seed and the batch's epoch and step, so
                augmented batches depend on the seed only, not on tf.data's scheduling.
        """
        images = tf.constant(np.asarray(images, np.float32))
        labels = tf.constant(self.labels.astype(np.int32))
        size = self.batch_size

        def generate():
            for step, (indices, learner) in enumerate(self.epoch_batches()):
                # epoch_batches has advanced the epoch counter on its first step.
                yield indices.astype(np.int32), np.int32(learner), np.int64(self.epoch - 1), \
                    np.int64(step)

        signature = (tf.TensorSpec([size], tf.int32), tf.TensorSpec([], tf.int32),
                     tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64))
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(self.steps))
        base_seed = tf.constant([self.seed, AUGMENT_STREAM], tf.int64)

        def gather(indices, learner, epoch, step):
            batch = tf.gather(images, indices)
            if augment is not None:
                seed = tf.random.experimental.stateless_fold_in(
                    tf.random.experimental.stateless_fold_in(base_seed, epoch), step)
                batch = augment(batch, seed)
            inputs = {"images": batch, "learner": tf.fill([size], learner), "indices": indices}
            return inputs, tf.gather(labels, indices)

        # Autotuning off: tf.data joins its tuning thread whenever an iterator is destroyed,
        # which stalled every epoch boundary by 0.1 to 1 s (docs/performance.md), and a gather
        # and a prefetch have nothing to tune.
        options = tf.data.Options()
        options.autotune.enabled = False
        return (dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(prefetch)
                .with_options(options))

    def as_path_dataset(self, paths, preprocessing=None, contents=None, seed=0, prefetch=2,
                        augmentation=None):
        """`as_dataset` for images on disk: the same batches, decoded by the run's
        `Preprocessing` record and augmented by `dnc_keras.images.sampler_dataset` (random
        resized crop and flip, float32 in [0, 1])."""
        from dnc_keras.images import sampler_dataset

        return sampler_dataset(self, paths, preprocessing=preprocessing, contents=contents,
                               seed=seed, prefetch=prefetch, augmentation=augmentation)

    def get_state(self):
        """What a checkpoint needs to resume the same batches: epoch, K and assignment."""
        return {"epoch": self.epoch, "num_clusters": self.num_clusters,
                "assignment": self.assignment.copy(), "updated_at_epoch": self.updated_at_epoch,
                "single_cluster": self.single_cluster}

    def set_state(self, state):
        self.set_clusters(state["assignment"], state["num_clusters"], state["updated_at_epoch"])
        self.epoch = int(state["epoch"])
        self.single_cluster = bool(state.get("single_cluster", False))


def _class_members(indices, labels):
    members = {}
    for i in indices:
        members.setdefault(int(labels[i]), []).append(int(i))
    return {c: np.array(v) for c, v in members.items()}


def _check_classes(labels):
    classes, counts = np.unique(labels, return_counts=True)
    single = classes[counts < 2]
    if len(single):
        raise ValueError(f"{len(single)} training class(es) have a single image (labels "
                         f"{single[:10].tolist()}{'...' if len(single) > 10 else ''}); metric "
                         "learning needs at least 2 images per class. Drop or complete them.")
    if len(classes) < 2:
        raise ValueError(f"Metric learning needs at least 2 training classes; got {len(classes)}")
