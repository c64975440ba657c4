"""Cluster-aware batches: one cluster per batch, round-robin over clusters, P x M inside.

The sampler holds the current cluster assignment; the schedule's callback writes a new one at
each clustering and division, and the next epoch's batches follow it. It yields indices,
learner, epoch and step, nothing about images: `dnc_keras.batches` turns them into images.
"""

import warnings

import numpy as np
import tensorflow as tf

from dnc_keras.clustering import drop_single_image_classes
from dnc_keras_cli.options import EPOCH_LENGTHS, ORDERS

# Purpose of the batch-draw streams among a run's random streams (see dnc_keras.batches).
BATCH_STREAM = 0
WALK_STREAM = 3


class ClusterBatchSampler:
    """Draws class-balanced P x M batches, each from one cluster, clusters in round-robin.

    Inside a cluster, P distinct classes are drawn, M images each (with replacement for a
    class with fewer than M images); a cluster with fewer than P classes uses all of them with
    more images each, so every batch has exactly P * M images and traced functions never see
    a new shape. A cluster that cannot form a batch with at least 2 classes is skipped with a
    warning. The round-robin continues across epochs (its position is part of the sampler's
    state), so over a run every cluster gets the same number of batches, to within one, even
    when an epoch has fewer steps than there are clusters.

    By default an epoch has a fixed number of steps, N // (P * M) (one pass over the training
    images in expectation), whatever K and the cluster sizes are: runs with different K then
    compare at equal gradient steps. The papers' epoch (`epoch_length="largest"`) is K x the
    batches of the largest cluster, smaller clusters drawn again (CVPR's code), or K x the
    smallest's (`"smallest"`, the maintainers' later advice); its length changes with every
    division and re-clustering, and `steps` follows the assignment installed last; `model.fit`
    fixes an epoch's length for the call, so train it with `dnc_keras.training.job.fit_epochs`
    (one call per epoch) or the distributed loop.

    Args:
        labels: int class labels of the training images, shape [N].
        classes_per_batch: P. Defaults to `20` (CVPR; TPAMI uses 40).
        samples_per_class: M. Defaults to `4` (CVPR; TPAMI uses 2).
        seed: the run's seed; epoch e draws from `default_rng([seed, e, BATCH_STREAM])`, so
            seeds share no batches.
        steps_per_epoch: steps per epoch. Defaults to `None`: N // (P * M), at least 1.
        order: `"random"`: every batch draws its P classes and M images afresh (with
            replacement across batches: in an epoch some images come twice and a third of them
            not at all). `"walk"`: each cluster walks its images without replacement, each
            class's images in a shuffled order, the P classes with the most images not yet
            drawn first, so between two re-clusterings every image of a cluster is drawn once
            before any is drawn again. Defaults to `"random"`.
        epoch_length: `"fixed"` (`steps_per_epoch`, else N // (P * M)), `"largest"` or
            `"smallest"`: K x (images of the largest or smallest cluster // (P * M)), at least
            one batch per cluster, over the clusters that can form a batch. Defaults to
            `"fixed"`.
    """

    def __init__(self, labels, classes_per_batch=20, samples_per_class=4, seed=0,
                 steps_per_epoch=None, order="random", epoch_length="fixed"):
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if classes_per_batch < 2 or samples_per_class < 1:
            raise ValueError("Need classes_per_batch >= 2 and samples_per_class >= 1. Received: "
                             f"P={classes_per_batch}, M={samples_per_class}")
        _check_classes(self.labels)
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}. Received: order={order!r}")
        self.order = order
        check_epoch_length(epoch_length, steps_per_epoch)
        self.epoch_length = epoch_length
        self._fixed_steps = (max(1, len(self.labels) // self.batch_size)
                             if steps_per_epoch is None else int(steps_per_epoch))
        if self._fixed_steps < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}")
        self.epoch = 0
        self.turn = 0  # the round-robin's position, across epochs
        self.updated_at_epoch = None
        self.set_clusters(np.zeros(len(self.labels), np.int64), 1)

    @property
    def batch_size(self):
        return self.classes_per_batch * self.samples_per_class

    @property
    def steps(self):
        """Steps in an epoch of the current assignment (see `epoch_length`)."""
        if self.epoch_length == "fixed":
            return self._fixed_steps
        images = [n for n, k in self._sizes if k >= 2]
        if not images:  # epoch_batches says why no batch can be formed
            return self._fixed_steps
        size = max(images) if self.epoch_length == "largest" else min(images)
        return len(images) * max(1, size // self.batch_size)

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
        self._sizes = [(sum(len(v) for v in m.values()), len(m)) for m in self._members]

    def cluster_sizes(self):
        """(images, classes) per cluster, after dropping classes with one image there."""
        return list(self._sizes)

    def epoch_batches(self):
        """One epoch of (indices [P*M], learner id) pairs; advances the epoch counter and the
        round-robin."""
        rng = np.random.default_rng([self.seed, self.epoch, BATCH_STREAM])
        self.epoch += 1
        clusters = [c for c, (_, k) in enumerate(self.cluster_sizes()) if k >= 2]
        for c, (_, k) in enumerate(self.cluster_sizes()):
            if k < 2:
                warnings.warn(f"Cluster {c} has {k} usable class(es); it is skipped this epoch")
        if not clusters:
            raise ValueError("No cluster has 2 classes with 2 images each: cannot form a batch")
        walks = self._walks(clusters) if self.order == "walk" else None
        for _ in range(self.steps):
            c = clusters[self.turn % len(clusters)]
            self.turn += 1
            yield (walks[c].draw() if walks else self._draw(self._members[c], rng)), c

    def _walks(self, clusters):
        """Each cluster's walk, where the batches drawn since the assignment was installed have
        left it. It is replayed from the seed, the assignment's epoch and the round-robin
        position, so a resumed run (which holds only those) continues the same walk."""
        start = self.updated_at_epoch or 0
        walks = {c: _ClassWalk(self._members[c], self.classes_per_batch,
                               self.samples_per_class,
                               np.random.default_rng([self.seed, start, WALK_STREAM, c]))
                 for c in clusters}
        # This epoch's counter was advanced by epoch_batches already; the turn was not yet.
        past = max(0, (self.epoch - 1 - start)) * self.steps
        for turn in range(self.turn - past, self.turn):
            walks[clusters[turn % len(clusters)]].draw()
        return walks

    def index_batches(self):
        """tf.data of (indices [P*M] int64, learner int32, epoch int64, step int64), one element
        per step of an epoch; re-run every epoch (`dnc_keras.batches.training_batches`)."""
        def generate():
            for step, (indices, learner) in enumerate(self.epoch_batches()):
                # epoch_batches has advanced the epoch counter on its first step.
                yield indices.astype(np.int64), np.int32(learner), np.int64(self.epoch - 1), \
                    np.int64(step)

        signature = (tf.TensorSpec([self.batch_size], tf.int64), tf.TensorSpec([], tf.int32),
                     tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64))
        return tf.data.Dataset.from_generator(generate, output_signature=signature)

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
        """`dnc_keras.batches.training_batches` of this sampler: ({"images", "learner",
        "indices"}, labels) per step.

        Args:
            images: the training images: an array [N, H, W, C] (float32 in [0, 1]) aligned
                with the labels, or an image source (`dnc_keras.batches.FileSource`).
            augment: for an array, an optional callable (images, seed) -> images applied per
                batch, e.g. `dnc_keras.augmentation.RandomAffine()`. Defaults to `None`.
        """
        from dnc_keras import batches

        if not hasattr(images, "batches"):
            images = batches.ArraySource(images, augment)
        elif augment is not None:
            raise ValueError("augment applies to images in memory; a FileSource augments "
                             "with its own RandomResizedCrop")
        return batches.training_batches(self, images, prefetch)

    def get_state(self):
        """What a checkpoint needs to resume the same batches: epoch, round-robin position,
        K and assignment (the random draws follow from the seed and the epoch)."""
        return {"epoch": self.epoch, "turn": self.turn, "num_clusters": self.num_clusters,
                "assignment": self.assignment.copy(), "updated_at_epoch": self.updated_at_epoch}

    def set_state(self, state):
        self.set_clusters(state["assignment"], state["num_clusters"], state["updated_at_epoch"])
        self.epoch = int(state["epoch"])
        self.turn = int(state.get("turn", 0))


class _ClassWalk:
    """One cluster's images drawn without replacement: every class's images in a shuffled
    queue; a batch takes the P classes with the most images left (ties in a random order) and M
    images of each; an exhausted queue is shuffled again."""

    def __init__(self, members, classes_per_batch, samples_per_class, rng):
        self.rng = rng
        self.classes = np.array(sorted(members))
        self.queues = [rng.permutation(members[c]) for c in self.classes]
        self.used = np.zeros(len(self.classes), np.int64)
        self.size = len(self.classes)
        self.chosen = min(classes_per_batch, self.size)
        self.counts = np.full(self.chosen, classes_per_batch * samples_per_class // self.chosen)
        self.counts[: classes_per_batch * samples_per_class - self.counts.sum()] += 1

    def draw(self):
        left = np.array([len(q) for q in self.queues]) - self.used
        order = np.lexsort((self.rng.random(self.size), -left))[: self.chosen]
        return np.concatenate([self._take(i, n) for i, n in zip(order, self.counts)])

    def _take(self, i, n):
        picks = []
        while n > 0:
            queue = self.queues[i]
            if self.used[i] == len(queue):
                self.queues[i] = queue = self.rng.permutation(queue)
                self.used[i] = 0
            take = min(n, len(queue) - self.used[i])
            picks.append(queue[self.used[i]: self.used[i] + take])
            self.used[i] += take
            n -= take
        return np.concatenate(picks)


def check_epoch_length(epoch_length, steps_per_epoch):
    """ValueError unless `epoch_length` is known and, unless fixed, `steps_per_epoch` unset."""
    if epoch_length not in EPOCH_LENGTHS:
        raise ValueError(f"epoch_length must be one of {EPOCH_LENGTHS}. Received: "
                         f"epoch_length={epoch_length!r}")
    if epoch_length != "fixed" and steps_per_epoch is not None:
        raise ValueError(f"steps_per_epoch fixes the epoch's length; epoch_length="
                         f"{epoch_length!r} sets it from the clusters. Received both: "
                         f"steps_per_epoch={steps_per_epoch}")


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
