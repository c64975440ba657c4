"""Checkpoints a run resumes from, under `model.fit` and the distributed loop alike.

A checkpoint (`tf.train.Checkpoint`, in `<run>/checkpoints`) holds everything that decides what
the rest of the run computes: the model's variables (weights, masks, K, the conquer flag, the
dropout seed generators' state), both optimizers' slots, the epoch and step reached, the
sampler's state (epoch counter, round-robin position, K, cluster assignment), the feature bank
when there is one, and the run's record so far (per-epoch logs, the schedule's outcomes,
seconds trained). Every other random draw is keyed by the seed and the epoch, so a run killed at
any point and resumed ends with the same model as one never interrupted (bit for bit on CPU with
op determinism on: `--deterministic`).

`tf.train.CheckpointManager` writes each checkpoint under a new name and then updates its index,
so a kill mid-write leaves the previous one; a checkpoint that cannot be read (truncated,
corrupt) is named in a warning and the one before it is used.
"""

from __future__ import annotations

import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from dnc_keras.files import atomic_path

CHECKPOINTS = "checkpoints"


class TrainingState:
    """Saves and restores a run's state; see the module docstring.

    Args:
        model: the `DnCModel` (its optimizers are saved with it).
        sampler: the `ClusterBatchSampler`.
        directory: the checkpoint folder. Defaults to `None`: nothing saved or restored.
        max_to_keep: checkpoints kept. Defaults to `2` (the latest, and one to fall back on).
        write_directory: where this process writes (other workers of a cluster write scratch
            copies). Defaults to `directory`.
    """

    def __init__(self, model, sampler, directory=None, max_to_keep=2, write_directory=None):
        self.model = model
        self.sampler = sampler
        self.directory = directory
        n = len(sampler.labels)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.record = tf.Variable("{}", dtype=tf.string, trainable=False, name="record")
        self.sampler_vars = dict(
            epoch=tf.Variable(0, dtype=tf.int64, trainable=False),
            turn=tf.Variable(0, dtype=tf.int64, trainable=False),
            num_clusters=tf.Variable(1, dtype=tf.int64, trainable=False),
            assignment=tf.Variable(np.zeros(n, np.int64), trainable=False),
            updated_at_epoch=tf.Variable(-1, dtype=tf.int64, trainable=False))
        _build_optimizers(model)
        trackables = dict(model=model, optimizer=model.optimizer,
                          progress=tf.train.Checkpoint(epoch=self.epoch, step=self.step,
                                                       record=self.record),
                          sampler=tf.train.Checkpoint(**self.sampler_vars))
        if getattr(model, "mask_optimizer", None) is not None:
            trackables["mask_optimizer"] = model.mask_optimizer
        if getattr(model, "beta_optimizer", None) is not None:
            trackables["beta_optimizer"] = model.beta_optimizer
        # Keras' SeedGenerator (dropout's) is not reachable by checkpoint tracking: its state
        # is listed explicitly, or a resumed run would draw the first epoch's masks again.
        seeds = [v for v in model.variables if "seed_generator_state" in v.path]
        if seeds:
            trackables["seed_generators"] = tf.train.Checkpoint(
                **{f"state_{i}": v.value for i, v in enumerate(seeds)})
        # The epoch's running metrics (loss, overlap, ...: sums and counts), so that an epoch
        # resumed from a mid-epoch checkpoint logs the mean over all its steps, not only those
        # after the resume.
        metric_vars = [v for metric in model.metrics for v in metric.variables]
        if metric_vars:
            trackables["metrics"] = tf.train.Checkpoint(
                **{f"state_{i}": v.value for i, v in enumerate(metric_vars)})
        bank = getattr(model, "feature_bank", None)
        if bank is not None:
            trackables["feature_bank"] = tf.train.Checkpoint(
                features=bank.features, seen=bank.seen, new_at_last_read=bank.new_at_last_read)
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = None
        if directory:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, write_directory or directory, max_to_keep=max_to_keep)

    def save(self, epoch, step, sampler_state, record):
        """Writes a checkpoint: training has done `epoch` epochs and `step` steps of the next,
        the sampler was in `sampler_state` when that epoch began; `record` is JSON-able."""
        if self.manager is None:
            return None
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.record.assign(json.dumps(record))
        v = self.sampler_vars
        v["epoch"].assign(sampler_state["epoch"])
        v["turn"].assign(sampler_state["turn"])
        v["num_clusters"].assign(sampler_state["num_clusters"])
        v["assignment"].assign(sampler_state["assignment"])
        updated = sampler_state["updated_at_epoch"]
        v["updated_at_epoch"].assign(-1 if updated is None else updated)
        return self.manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))

    def restore(self):
        """Restores the latest readable checkpoint of `directory`.

        Returns:
            (epoch, step, record) reached, or None when there is none to resume from.
        """
        if not self.directory:
            return None
        state = tf.train.get_checkpoint_state(self.directory)
        candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
        for path in candidates:
            try:
                _read_every_tensor(path)  # a truncated file fails here, before any variable
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError,
                    OSError) as error:
                reason = (str(getattr(error, "message", error)).strip().splitlines()
                          or [type(error).__name__])[0]
                warnings.warn(f"checkpoint {path} cannot be read ({reason}); trying the one "
                              "before it", stacklevel=2)
                continue
            v = self.sampler_vars
            updated = int(v["updated_at_epoch"].numpy())
            self.sampler.set_state({
                "epoch": int(v["epoch"].numpy()), "turn": int(v["turn"].numpy()),
                "num_clusters": int(v["num_clusters"].numpy()),
                "assignment": v["assignment"].numpy(),
                "updated_at_epoch": None if updated < 0 else updated})
            self.restored_from = path
            return (int(self.epoch.numpy()), int(self.step.numpy()),
                    json.loads(self.record.numpy().decode()))
        if candidates:
            raise ValueError(f"no checkpoint in {self.directory} can be read (tried "
                             f"{', '.join(os.path.basename(p) for p in candidates)}); pass "
                             "--overwrite to start the run again")
        return None


def _read_every_tensor(path):
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def _build_optimizers(model):
    """Creates the optimizers' slots now: a checkpoint restores only variables that exist (a
    Keras 3 optimizer does not defer the restoration of slots it has yet to create)."""
    with model.distribute_strategy.scope():
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.encoder.trainable_variables)
        masks = getattr(model, "mask_optimizer", None)
        if masks is not None and not masks.built:
            masks.build([model.subspaces.masks])


class EpochCheckpoint(keras.callbacks.Callback):
    """`model.fit`'s checkpoints: the `TrainingState` after every epoch whose steps were all
    finite, with the run's record.

    Args:
        state: the run's `TrainingState`.
        record: callable (epoch, logs) -> the JSON-able record to store.
    """

    def __init__(self, state, record):
        super().__init__()
        self.state = state
        self.record = record

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if float(logs.get("nonfinite", 0.0)) > 0 or (
                loss is not None and not np.isfinite(float(loss))):
            return  # a diverged epoch: the last good checkpoint stays
        self.state.save(epoch + 1, 0, self.state.sampler.get_state(),
                        self.record(epoch, logs))


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the highest `monitor` in `path`, written atomically
    (a kill mid-write leaves the previous best), for model selection on validation classes.

    Args:
        path: a `.weights.h5` file.
        monitor: the log to maximise. Defaults to `"val_MAP@R"`.
        best: the value to beat (a resumed run's best so far). Defaults to `-inf`.
    """

    def __init__(self, path, monitor="val_MAP@R", best=-np.inf):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(float(value)) or float(value) <= self.best:
            return
        self.best = float(value)
        with atomic_path(self.path) as tmp:
            self.model.save_weights(tmp)
