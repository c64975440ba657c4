"""Reads the scalars TensorBoard would show from a log folder's event files."""

import os

import numpy as np


def scalars(log_dir):
    """{tag: [(step, value), ...]} of every scalar summary under `log_dir` (recursively)."""
    import tensorflow as tf

    found = {}
    for root, _, files in os.walk(log_dir):
        for name in sorted(files):
            if "tfevents" not in name:
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        number = float(np.asarray(tf.make_ndarray(value.tensor)).reshape(-1)[0])
                    elif value.HasField("simple_value"):
                        number = float(value.simple_value)
                    else:
                        continue
                    found.setdefault(value.tag, []).append((int(event.step), number))
    return found
