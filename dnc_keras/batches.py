"""The one input pipeline: the sampler's index batches and an image source -> tf.data batches.

    sampler (indices, learner, epoch, step)  ->  source (indices -> images)  ->  batches

`ClusterBatchSampler` decides which images form each batch and which learner trains on it; an
image source turns indices into model input: `ArraySource` gathers images held in memory (and
augments them, optionally), `FileSource` decodes files with the run's preprocessing record and
crops them at random (the on-disk benchmarks). `model.fit`, the distributed loop and the
benchmarks all train on `training_batches(sampler, source)`, which yields
`({"images", "learner", "indices"}, labels)`, one batch per sampler step; the generator re-runs
every epoch, so a new clustering takes effect at the next epoch.

Random draws are stateless and seeded by the sampler's seed, a stream per purpose, the epoch
and the step, so a seed gives the same batches whatever tf.data's scheduling, and two seeds
give independent ones.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Purposes of a run's random streams (dnc_keras.sampling draws batches with stream 0 and
# dnc_keras.callbacks clusters with stream 2).
AUGMENT_STREAM = 1
CROP_STREAM = 3


def stream_seed(seed, stream, epoch, step=None):
    """int64 [2] stateless seed of (run seed, purpose, epoch[, step]) for tf.random.stateless_*."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
    out = tf.random.experimental.stateless_fold_in(base, epoch)
    return out if step is None else tf.random.experimental.stateless_fold_in(out, step)


class ArraySource:
    """Images held in memory [N, H, W, C] (float32 in [0, 1]), gathered per batch.

    Args:
        images: the training images, aligned with the sampler's labels.
        augment: optional callable (images, seed) -> images applied per batch, e.g.
            `dnc_keras.augmentation.RandomAffine()`. Defaults to `None`.
    """

    def __init__(self, images, augment=None):
        self.images = np.asarray(images, np.float32)
        self.augment = augment

    def __len__(self):
        return len(self.images)

    def batches(self, index_batches, labels, seed):
        images = tf.constant(self.images)

        def gather(indices, learner, epoch, step):
            batch = tf.gather(images, indices)
            if self.augment is not None:
                batch = self.augment(batch, stream_seed(seed, AUGMENT_STREAM, epoch, step))
            return _inputs(batch, learner, indices), tf.gather(labels, indices)

        # deterministic=True: a user's Options(deterministic=False) must not reorder the steps
        # (each batch's learner and augmentation seed belong to its position in the epoch).
        return index_batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class FileSource:
    """Image files decoded with the run's preprocessing record and cropped at random.

    Args:
        paths: image paths [N], aligned with the sampler's labels.
        preprocessing: the run's `Preprocessing`. Defaults to
            `dnc_keras.images.benchmark_preprocessing()`.
        augmentation: the training crop, a `dnc_keras.images.RandomResizedCrop`. Defaults to
            `RandomResizedCrop()`.
        contents: optional string tensor [N] of the files' bytes (`images.read_all`).
        num_parallel_calls: decode parallelism. Defaults to `tf.data.AUTOTUNE`.
    """

    def __init__(self, paths, preprocessing=None, augmentation=None, contents=None,
                 num_parallel_calls=tf.data.AUTOTUNE):
        from dnc_keras import images

        self.files = images._Source(paths, contents)
        self.preprocessing = preprocessing or images.benchmark_preprocessing()
        self.augmentation = augmentation or images.RandomResizedCrop()
        self.num_parallel_calls = num_parallel_calls

    def __len__(self):
        return len(self.files.paths)

    def batches(self, index_batches, labels, seed):
        def per_image(indices, learner, epoch, step):
            size = tf.shape(indices, out_type=tf.int64)[0]
            positions = step * size + tf.range(size, dtype=tf.int64)
            base = stream_seed(seed, CROP_STREAM, epoch)
            seeds = tf.map_fn(lambda p: tf.random.experimental.stateless_fold_in(base, p),
                              positions)
            return tf.data.Dataset.from_tensor_slices(
                (indices, tf.fill([size], learner), seeds))

        def load(index, learner, image_seed):
            image = self.augmentation(self.files.read(index), self.preprocessing, image_seed)
            return image, learner, index, tf.gather(labels, index)

        batch_size = index_batches.element_spec[0].shape[0]
        dataset = index_batches.flat_map(per_image)
        dataset = dataset.map(load, num_parallel_calls=self.num_parallel_calls,
                              deterministic=True)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.map(lambda images, learner, indices, y: (
            _inputs(images, learner, indices), y))


def _inputs(images, learner, indices):
    size = tf.shape(indices)[0]
    learner = tf.broadcast_to(learner, [size]) if learner.shape.rank == 0 else learner
    return {"images": images, "learner": learner, "indices": tf.cast(indices, tf.int32)}


def training_batches(sampler, source, prefetch=2):
    """tf.data batches `({"images", "learner", "indices"}, labels)` of the sampler's steps.

    Args:
        sampler: a `ClusterBatchSampler`.
        source: an `ArraySource` or `FileSource` (an array is wrapped in an `ArraySource`).
        prefetch: batches prepared ahead. Defaults to `2`.
    """
    if not hasattr(source, "batches"):
        source = ArraySource(source)
    if len(source) != len(sampler.labels):
        raise ValueError(f"the image source must align with the sampler's labels. Received: "
                         f"{len(source)} images for {len(sampler.labels)} labels")
    labels = tf.constant(sampler.labels.astype(np.int32))
    dataset = source.batches(sampler.index_batches(), labels, sampler.seed)
    if sampler.epoch_length == "fixed":
        # A known length lets fit's progress bar count down; the papers' epoch changes length
        # with every re-clustering, so fit learns it (dnc_keras.training.job trains those
        # with one fit call per epoch).
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(sampler.steps))
    # Autotuning off: tf.data joins its tuning thread whenever an iterator is destroyed, which
    # stalled every epoch boundary by 0.1 to 1 s (docs/performance.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(prefetch).with_options(options)
