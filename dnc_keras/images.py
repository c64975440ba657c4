"""tf.data image pipeline for datasets on disk: read, decode, augment, batch, prefetch.

Every image is decoded and sized by the run's `Preprocessing` record
(`dnc_keras.preprocessing`), the one implementation that the export serves too. The on-disk
benchmarks' record is `benchmark_preprocessing`: the papers' evaluation transform, shorter side
256 and centre crop 224 with an antialiased bilinear filter (torchvision's `Resize(256)` and
`CenterCrop(224)` on PIL images). Training augments with the official codes' (torchvision)
`RandomResizedCrop(224)` (area scale 0.08-1 and aspect ratio 3/4-4/3, ten tries, else a centre
crop clamped to that ratio range) and a horizontal flip with probability 0.5, resizing the crop
with the record's filter. Images come out float32 in [0, 1]; the backbone normalises them
itself (ResNet-50's caffe preprocessing lives inside the model).

JPEG, PNG, GIF (first frame) and BMP decode in parallel. Every random draw is stateless, seeded
by (seed + epoch, position in the epoch), so the same seed gives the same batches and the same
crops whatever the parallelism.

A corrupt file would stop `model.fit` hours into a run: `find_unreadable` decodes every image
once before training, and `drop_unreadable` removes the failures from a split, naming them in a
warning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import tensorflow as tf

from dnc_keras import preprocessing as pp
from dnc_keras.datasets._paths import ImageSplit
from dnc_keras.preprocessing import Preprocessing

AUTOTUNE = tf.data.AUTOTUNE
# torchvision.transforms.RandomResizedCrop defaults, used by both official codes.
TRAIN_SCALE = (0.08, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_IMAGE_SIZE = 224
_CROP_TRIES = 10
# Unreadable files named in a warning; the rest are counted.
_SHOWN = 5


def benchmark_preprocessing(image_size=DEFAULT_IMAGE_SIZE, resize_size=None, channels=3):
    """The on-disk benchmarks' record: shorter side to `resize_size` (default
    `round(image_size * 256 / 224)`, 256 for 224), centre crop `image_size`, antialiased
    bilinear, as the papers evaluate."""
    if resize_size is None:
        resize_size = int(round(image_size * 256 / 224))
    if image_size < 1 or resize_size < image_size:
        raise ValueError(f"Need 1 <= image_size <= resize_size. Received: image_size="
                         f"{image_size}, resize_size={resize_size}")
    return Preprocessing(size=(image_size, image_size), channels=channels, fit="crop",
                         resize_to=resize_size, kernel="bilinear")


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """Training augmentation of the on-disk benchmarks (torchvision's, as the official codes).

    Args:
        scale: area range of the crop, as a fraction of the image. Defaults to `(0.08, 1.0)`.
        ratio: aspect-ratio (width / height) range of the crop. Defaults to `(3/4, 4/3)`.
        flip: random horizontal flip. Defaults to `True`.
    """

    scale: tuple[float, float] = TRAIN_SCALE
    ratio: tuple[float, float] = TRAIN_RATIO
    flip: bool = True

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1. Received: {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max. Received: {self.ratio}")

    def __call__(self, contents, record, seed):
        """Encoded bytes -> a random crop resized by `record`'s filter to its size, maybe
        flipped: float32 [H, W, C] in [0, 1].

        Args:
            contents: scalar string tensor, the file's bytes.
            record: the run's `Preprocessing`.
            seed: int tensor [2], the stateless seed of this image's draws.
        """
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = pp.decode(contents, record)
        size = tf.shape(image)
        y, x, h, w = _crop_window(size[0], size[1], self.scale, self.ratio, crop_seed)
        window = image[None, y:y + h, x:x + w]
        stretch = dataclasses.replace(record, fit="stretch", resize_to=None)
        resized = pp.finish(pp.resize(window, stretch), record)[0]
        if self.flip:
            flip = tf.random.stateless_uniform([], flip_seed) < 0.5
            resized = tf.cond(flip, lambda: tf.image.flip_left_right(resized), lambda: resized)
        return tf.ensure_shape(resized, record.shape)


def _crop_window(height, width, scale, ratio, seed):
    """torchvision's RandomResizedCrop.get_params, drawn statelessly: (y, x, h, w)."""
    area_seed, ratio_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = height_f * width_f
    target = area * tf.random.stateless_uniform([_CROP_TRIES], area_seed, scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([_CROP_TRIES], ratio_seed, math.log(ratio[0]),
                                            math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    # Fallback when no try fits: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = width_f / height_f
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(height_f * ratio[1]), width_f)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(width_f / ratio[0]), height_f)
    first = tf.argmax(tf.cast(fits, tf.int32))
    any_fits = tf.reduce_any(fits)
    h = tf.where(any_fits, h[first], tf.cast(fallback_h, tf.int32))
    w = tf.where(any_fits, w[first], tf.cast(fallback_w, tf.int32))
    h, w = tf.clip_by_value(h, 1, height), tf.clip_by_value(w, 1, width)
    y = tf.random.stateless_uniform([], y_seed, 0, height - h + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], x_seed, 0, width - w + 1, dtype=tf.int32)
    y = tf.where(any_fits, y, (height - h) // 2)
    x = tf.where(any_fits, x, (width - w) // 2)
    return y, x, h, w


# -- sources: file paths, or their bytes held in memory ------------------------------------

def _path_tensor(paths):
    return tf.constant(np.asarray([str(p) for p in paths], dtype=object), tf.string)


def read_all(paths, num_parallel_calls=AUTOTUNE) -> tf.Tensor:
    """Every file's bytes, read in parallel, as a string tensor [N] (the in-memory cache).

    Encoded JPEGs take about a tenth of their decoded size: CUB's 11,788 images about 1.1 GB.
    """
    dataset = tf.data.Dataset.from_tensor_slices(_path_tensor(paths))
    dataset = dataset.map(tf.io.read_file, num_parallel_calls=num_parallel_calls).batch(512)
    chunks = [chunk for chunk in dataset.as_numpy_iterator()]
    return tf.constant(np.concatenate(chunks) if chunks else np.zeros([0], object), tf.string)


class _Source:
    """Index -> encoded bytes: read from the file, or gathered from the in-memory cache."""

    def __init__(self, paths, contents=None):
        self.paths = np.asarray(paths, dtype=object).reshape(-1)
        if contents is not None and int(contents.shape[0]) != len(self.paths):
            raise ValueError(f"contents must hold one entry per path. Received: "
                             f"{int(contents.shape[0])} for {len(self.paths)} paths")
        self.cached = contents is not None
        self.table = contents if self.cached else _path_tensor(self.paths)

    def read(self, index):
        entry = tf.gather(self.table, index)
        return entry if self.cached else tf.io.read_file(entry)


# -- unreadable files -------------------------------------------------------------------

def _check_decodes(contents):
    size = tf.shape(pp.decode(contents, Preprocessing(size=1, channels=3)))
    return tf.debugging.assert_positive(size[:2], message="empty image")


def find_unreadable(paths, contents=None, num_parallel_calls=AUTOTUNE):
    """Decodes every image once; returns [(index, path, reason)] for those that fail.

    Args:
        paths: image paths [N].
        contents: optional string tensor [N] of the files' bytes (see `read_all`).
        num_parallel_calls: decode parallelism. Defaults to `tf.data.AUTOTUNE`.

    Returns:
        list of (index, path, reason), sorted by index; empty when every image decodes.
    """
    source = _Source(paths, contents)
    n = len(source.paths)

    def check(index):
        with tf.control_dependencies([_check_decodes(source.read(index))]):
            return tf.identity(index)

    dataset = tf.data.Dataset.range(n).map(check, num_parallel_calls=num_parallel_calls)
    dataset = dataset.ignore_errors().batch(4096)
    decoded = np.concatenate([np.zeros([0], np.int64)] + list(dataset.as_numpy_iterator()))
    failures = []
    for index in np.setdiff1d(np.arange(n), decoded):
        try:
            _check_decodes(source.read(tf.constant(index, tf.int64)))
            reason = "failed to decode in the pipeline"
        except (tf.errors.OpError, ValueError) as err:
            reason = pp.error_reason(err)
        failures.append((int(index), str(source.paths[index]), reason))
    return failures


def drop_unreadable(split: ImageSplit, split_name="train", contents=None):
    """The split without its unreadable images, and the failures [(index, path, reason)].

    Warns naming the first files; classes left without images disappear from the split.
    """
    failures = find_unreadable(split.paths, contents)
    if not failures:
        return split, failures
    shown = "; ".join(f"{path} ({reason})" for _, path, reason in failures[:_SHOWN])
    more = f" and {len(failures) - _SHOWN} more" if len(failures) > _SHOWN else ""
    warnings.warn(f"Skipping {len(failures)} unreadable image(s) of the {split_name} split: "
                  f"{shown}{more}", stacklevel=2)
    keep = np.ones(len(split), bool)
    keep[[i for i, _, _ in failures]] = False
    return split.subset(keep), failures


# -- datasets -----------------------------------------------------------------------------

def eval_dataset(paths, preprocessing=None, batch_size=128, contents=None, start=0,
                 prefetch=2, num_parallel_calls=AUTOTUNE):
    """Batches of the record's model input [b, H, W, C], in path order from `start`."""
    preprocessing = preprocessing or benchmark_preprocessing()
    source = _Source(paths, contents)
    dataset = tf.data.Dataset.range(start, len(source.paths))
    decode = pp.file_function(preprocessing)  # traced once, not once per pass
    dataset = dataset.map(lambda i: decode(source.read(i)), num_parallel_calls=num_parallel_calls)
    return dataset.batch(batch_size).prefetch(prefetch)


class ImageFiles:
    """A read-only, lazily decoded array of images through the run's `Preprocessing` record.

    Supports `len()`, `shape` and indexing by int, slice or index array, returning float32
    numpy arrays, so that `DnCModel.embed` and the DnC callbacks, written for in-memory arrays,
    embed a dataset on disk unchanged. Consecutive slices (what `embed` asks for) stream from
    one prefetched tf.data pipeline, so a pass decodes in parallel and holds one batch at a time.

    Args:
        paths: image paths [N].
        preprocessing: a `Preprocessing`. Defaults to `benchmark_preprocessing()` (256 -> 224,
            RGB).
        batch_size: images per decoded batch. Defaults to `128`.
        contents: optional string tensor [N] of the files' bytes (see `read_all`).
    """

    def __init__(self, paths, preprocessing=None, batch_size=128, contents=None):
        self.paths = np.asarray(paths, dtype=object).reshape(-1)
        self.preprocessing = preprocessing or benchmark_preprocessing()
        self.batch_size = int(batch_size)
        self.contents = contents
        self._iterator = None
        self._next = 0
        self._buffer = self._empty()

    @property
    def shape(self):
        return (len(self.paths), *self.preprocessing.shape)

    @property
    def ndim(self):
        return 4

    dtype = np.dtype("float32")

    def __len__(self):
        return len(self.paths)

    def _empty(self):
        return np.zeros((0, *self.preprocessing.shape), np.float32)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} images")
            return self._range(index, index + 1)[0]
        indices = np.asarray(key).reshape(-1)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        subset = ImageFiles(self.paths[indices], self.preprocessing, self.batch_size,
                            None if self.contents is None else tf.gather(self.contents, indices))
        return subset[:]

    def _range(self, start, stop):
        if stop <= start:
            return self._empty()
        if self._iterator is None or start != self._next:
            self._iterator = iter(eval_dataset(self.paths, self.preprocessing, self.batch_size,
                                               self.contents, start=start))
            self._next, self._buffer = start, self._empty()
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < stop - start:
            batch = next(self._iterator).numpy()
            chunks.append(batch)
            have += len(batch)
        buffer = np.concatenate(chunks) if len(chunks) > 1 else self._buffer
        out, self._buffer = buffer[:stop - start], buffer[stop - start:]
        self._next = stop
        if stop == len(self):
            self._iterator = None
        return out

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array if dtype is None else array.astype(dtype)

    def __repr__(self):
        return f"ImageFiles({len(self)} images -> {self.preprocessing.shape})"
