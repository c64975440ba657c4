"""Training augmentation of in-memory images: a random affine jitter, stateless and seeded.

`RandomAffine` rotates each image about its centre by an angle drawn uniformly in
[-max_rotation, max_rotation] and shifts it by a fraction of its size drawn uniformly in
[-max_shift, max_shift] along each axis, filling uncovered pixels with 0 (the background of the
small datasets, strokes bright on black), bilinear. Every draw comes from
`tf.random.stateless_uniform` seeded by the run's seed and the batch's position in the run, so a
seed gives the same augmented batches whatever the order tf.data runs them in, and two seeds
give independent ones. Augmentation never reaches an export: serving applies only the
preprocessing record.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class RandomAffine:
    """Random rotation and shift of float images [b, h, w, c].

    Args:
        max_rotation: largest rotation either way, in degrees. Defaults to `10.8` (Keras's
            `RandomRotation(0.03)`, a fraction of a full turn, which `--augment` used).
        max_shift: largest shift either way, as a fraction of the height (vertical) and width
            (horizontal). Defaults to `0.08`.
    """

    max_rotation: float = 10.8
    max_shift: float = 0.08

    def __post_init__(self):
        if not 0 <= self.max_rotation < 180:
            raise ValueError(f"max_rotation must be in [0, 180) degrees. Received: "
                             f"{self.max_rotation}")
        if not 0 <= self.max_shift < 1:
            raise ValueError(f"max_shift must be in [0, 1). Received: {self.max_shift}")

    def draw(self, batch, seed):
        """(angles [b] in radians, shifts [b, 2] as (dy, dx) fractions) for a seed [2]."""
        angle_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        limit = math.radians(self.max_rotation)
        angles = tf.random.stateless_uniform([batch], angle_seed, -limit, limit)
        shifts = tf.random.stateless_uniform([batch, 2], shift_seed, -self.max_shift,
                                             self.max_shift)
        return angles, shifts

    def __call__(self, images, seed):
        """images [b, h, w, c] float, seed int [2] -> the augmented images."""
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        angles, shifts = self.draw(shape[0], seed)
        return apply(images, angles, shifts)


def transforms(angles, shifts, height, width):
    """[b, 8] projective transforms (output -> input pixel maps) of ImageProjectiveTransformV3:
    the inverse of out = R(angle) (in - centre) + centre + shift * size."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    ty, tx = shifts[:, 0] * h, shifts[:, 1] * w
    cos, sin = tf.cos(angles), tf.sin(angles)
    # in = R(-angle) (out - centre - shift) + centre, in (x, y) coordinates.
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(cos)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def apply(images, angles, shifts):
    """The affine jitter with given parameters (bilinear, zeros outside)."""
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms(angles, shifts, shape[1], shape[2]),
        output_shape=shape[1:3], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
