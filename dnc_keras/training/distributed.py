"""A custom tf.distribute training loop for DnCModel: many devices, many machines, resumable.

Keras 3's `model.fit` does not run under `MultiWorkerMirroredStrategy` on TF 2.21; this loop does,
and it runs under `MirroredStrategy` and the default strategy too. Each step is
`strategy.run(model.train_step, ...)` over a distributed dataset, so mining and the loss see the
global batch exactly as under `model.fit` (see `dnc_keras.model.gather_global_batch`). The loop
calls the Keras callback hooks, so the same `DnCScheduleCallback` object serves both paths.

Re-clustering: while the loop runs, `model.embed` (what the callbacks call) is sharded across all
replicas of all workers and the embeddings all-gathered, so every worker clusters the same
matrix with the same seed; the chief's assignment is then broadcast, so that even a k-means
that is not bitwise reproducible (threads, GPU) cannot split the workers.

Fault tolerance: a `tf.train.Checkpoint` holds the weights (masks, K and the conquer flag are
model weights), both optimizers' state, the epoch and the step within it, and the sampler's
state (its epoch counter, round-robin position, K and cluster assignment), as
`dnc_keras.training.checkpoints.TrainingState` defines for both paths. `fit` resumes from the
latest checkpoint in `checkpoint_dir` and replays the interrupted epoch's remaining batches, so a
run killed at any point ends with the same model as an uninterrupted one (bit for bit under op
determinism, `--deterministic`).
"""

import contextlib
import os

import keras
import numpy as np
import tensorflow as tf

from dnc_keras.callbacks import with_cluster_epoch_progbar
from dnc_keras.training.checkpoints import TrainingState

STRATEGIES = ("mirrored", "multi-worker")


def make_strategy(name=None, devices=None):
    """The `tf.distribute` strategy for a name of the CLI's `--strategy`.

    Create it first thing in the program: `MultiWorkerMirroredStrategy` must exist before
    TensorFlow runs any op, and it reads the cluster from the `TF_CONFIG` environment variable
    (see docs/distributed.md).

    Args:
        name: `"mirrored"` (all local GPUs, else the CPU), `"multi-worker"` or `None` (the
            default, single-device strategy). Defaults to `None`.
        devices: devices of `"mirrored"`, e.g. `["/cpu:0", "/cpu:1"]`. Defaults to `None`: all
            local GPUs.
    """
    if name is None:
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi-worker":
        if devices is not None:
            raise ValueError("multi-worker uses each worker's local GPUs (or CPU); it takes no "
                             f"devices. Received: devices={devices!r}")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES} or None. Received: {name!r}")


def is_chief(strategy):
    """Whether this process writes checkpoints and run outputs (always, on one machine)."""
    return bool(strategy.extended.should_checkpoint)


def task_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)


class DistributedTrainer:
    """Trains a `DnCModel` with a custom loop under a `tf.distribute` strategy.

    Build and compile the model inside `strategy.scope()`. Every worker runs the same program
    with the same sampler seed and the same training images: each draws the same global batches
    and feeds its replicas their slices, so no data needs to move between machines.

    Args:
        model: a compiled `DnCModel`, built inside `strategy.scope()`.
        sampler: the `ClusterBatchSampler` over the training labels; its batch size (P x M) is the
            global batch and must be divisible by the number of replicas.
        dataset: the sampler's global batches, `dnc_keras.batches.training_batches(sampler,
            source)` (or `sampler.as_dataset(images)`), re-run every epoch.
            `strategy.experimental_distribute_dataset` splits each batch across the replicas;
            on several workers every worker reads the whole batch and keeps its share.
        strategy: the strategy. Defaults to `None`: the model's (`model.distribute_strategy`).
        checkpoint_dir: where checkpoints go (the chief's; other workers write scratch copies in
            sub-folders and delete them). Must be shared by all workers. Defaults to `None`: no
            checkpoints, no resume.
        checkpoint_every: also checkpoint every this many steps inside an epoch. Defaults to
            `None`: at the end of each epoch only.
        max_to_keep: checkpoints kept. Defaults to `2`.
        embed_batch_size: global batch of the sharded embedding extraction. Defaults to `256`.
        record: callable returning the run's JSON-able record (per-epoch logs, the schedule's
            outcomes, seconds) to store in each checkpoint (`TrainingState`); at an epoch's end
            it is called as `record(epoch, logs)` with that epoch's logs, inside an epoch as
            `record()`. Defaults to `None`: an empty record.

    Example:
    ```python
    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = build_model(...)
    callbacks = dnc_callbacks(sampler, x_train, conquer_epoch=8)
    trainer = DistributedTrainer(model, sampler, sampler.as_dataset(x_train),
                                 checkpoint_dir="run/checkpoints")
    history = trainer.fit(epochs=10, callbacks=callbacks)
    ```
    """

    def __init__(self, model, sampler, dataset, strategy=None, checkpoint_dir=None,
                 checkpoint_every=None, max_to_keep=2, embed_batch_size=256, record=None):
        self.strategy = strategy or model.distribute_strategy
        if model.distribute_strategy is not self.strategy:
            raise ValueError("The model was not built under this strategy: build and compile "
                             "it inside `strategy.scope()`.")
        if getattr(model, "optimizer", None) is None:
            raise ValueError("The model is not compiled: call model.compile(...) inside "
                             "strategy.scope() first.")
        self.replicas = self.strategy.num_replicas_in_sync
        if sampler.batch_size % self.replicas:
            raise ValueError(f"The global batch (P x M = {sampler.batch_size}) must be divisible "
                             f"by the number of replicas ({self.replicas}). Received: "
                             f"classes_per_batch={sampler.classes_per_batch}, "
                             f"samples_per_class={sampler.samples_per_class}")
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError("dataset must be a tf.data.Dataset of the sampler's batches "
                             "(sampler.as_dataset(images)). Received: "
                             f"{type(dataset).__name__}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1. Received: {checkpoint_every}")
        self.model = model
        self.sampler = sampler
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.max_to_keep = int(max_to_keep)
        self.embed_batch_size = int(embed_batch_size)
        self.is_chief = is_chief(self.strategy)
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.restored_from = None
        self.restored_record = None
        self.nan_at = None
        self.record = record or (lambda *epoch_logs: {})
        self._build_optimizers()
        # Every worker saves (saving may need collectives); only the chief's copy is kept.
        write_dir = None if not checkpoint_dir or self.is_chief else os.path.join(
            checkpoint_dir, f".worker{task_id(self.strategy)}")
        self.state = TrainingState(model, sampler, checkpoint_dir, max_to_keep, write_dir)
        self._dataset = self.strategy.experimental_distribute_dataset(
            _shard_by_batch_split(dataset))
        self._train_fn = None
        self._embed_fns = {}
        self._gather_fn = None

    # -- setup ------------------------------------------------------------------------------
    def _build_optimizers(self):
        # Slots (and the compiled metrics' variables) must exist before the step is traced:
        # variables cannot be created in a replica.
        self.model._build_compile_metrics()
        with self.strategy.scope():
            self.model.optimizer.build(self.model.encoder.trainable_variables)
            if self.model.mask_optimizer is not None:
                self.model.mask_optimizer.build([self.model.subspaces.masks])

    # -- steps ------------------------------------------------------------------------------
    def _train_step(self):
        if self._train_fn is None:
            strategy, model = self.strategy, self.model

            @tf.function
            def train_fn(iterator):
                logs = strategy.run(model.train_step, args=(next(iterator),))
                # Every replica computed the loss of the same global batch: any copy will do.
                return {k: strategy.experimental_local_results(v)[0] for k, v in logs.items()}

            self._train_fn = train_fn
        return self._train_fn

    def embed(self, images, output="embedding", batch_size=None):
        """`model.embed`, sharded: each replica of each worker embeds a slice of each chunk and
        all replicas all-gather the results, so every worker returns the whole [N, D] matrix."""
        if output not in ("embedding", "features"):
            raise ValueError(f"output must be 'embedding' or 'features'; got {output!r}")
        if not len(images):
            return type(self.model).embed(self.model, images, output=output)
        per_replica = -(-(batch_size or self.embed_batch_size) // self.replicas)
        chunk = per_replica * self.replicas
        fn = self._embed_fn(output)
        parts = []
        for start in range(0, len(images), chunk):
            # Slicing also reads image files (dnc_keras.images.ImageFiles) a chunk at a time.
            block = np.asarray(images[start:start + chunk], np.float32)
            block = np.concatenate([block, np.repeat(block[:1], chunk - len(block), 0)])
            values = self.strategy.experimental_distribute_values_from_function(
                lambda ctx, block=block: tf.constant(block[
                    ctx.replica_id_in_sync_group * per_replica:
                    (ctx.replica_id_in_sync_group + 1) * per_replica]))
            parts.append(fn(values).numpy())
        return np.concatenate(parts)[:len(images)]

    def _embed_fn(self, output):
        if output not in self._embed_fns:
            strategy, model = self.strategy, self.model

            def replica_fn(images):
                f, z = model.encoder(images, training=False)
                out = tf.math.l2_normalize(tf.cast(f, tf.float32), axis=-1) \
                    if output == "features" else model.subspaces(z)
                return tf.distribute.get_replica_context().all_gather(out, axis=0)

            @tf.function
            def fn(values):
                return strategy.experimental_local_results(
                    strategy.run(replica_fn, args=(values,)))[0]

            self._embed_fns[output] = fn
        return self._embed_fns[output]

    def _broadcast_clusters(self):
        """Installs the chief's assignment on every worker (worker 0 holds replica 0)."""
        if not self.multi_worker:
            return
        state = np.concatenate([[self.sampler.num_clusters], self.sampler.assignment])[None]
        if self._gather_fn is None:
            strategy = self.strategy

            def replica_fn(value):
                # identity places the value on the replica's device, as all_gather needs.
                value = tf.identity(value)
                return tf.distribute.get_replica_context().all_gather(value, axis=0)[0]

            @tf.function
            def gather_fn(values):
                return strategy.experimental_local_results(
                    strategy.run(replica_fn, args=(values,)))[0]

            self._gather_fn = gather_fn
        values = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(state))
        chief = self._gather_fn(values).numpy()
        if int(chief[0]) != self.sampler.num_clusters or \
                not np.array_equal(chief[1:], self.sampler.assignment):
            self.sampler.set_clusters(chief[1:], int(chief[0]), self.sampler.updated_at_epoch)

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, epoch, step, sampler_state, logs=None):
        record = self.record(epoch - 1, logs) if logs is not None else self.record()
        path = self.state.save(epoch, step, sampler_state, record)
        if path and not self.is_chief:
            tf.io.gfile.rmtree(self.state.manager.directory)

    def restore(self):
        """Restores the latest readable checkpoint of `checkpoint_dir`, if any; returns
        (epoch, step) reached ((0, 0) without one) and keeps its record in
        `restored_record`."""
        restored = self.state.restore()
        if restored is None:
            return 0, 0
        epoch, step, self.restored_record = restored
        self.restored_from = self.state.restored_from
        return epoch, step

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, epochs, callbacks=None, verbose=1, start=None):
        """Trains to `epochs` epochs, resuming from the latest checkpoint (or from `start`, an
        (epoch, step) the caller restored); returns a History of the epochs trained here.

        The callbacks get the Keras hooks in `model.fit`'s order (`on_train_begin`,
        `on_epoch_begin`, `on_train_batch_begin/end`, `on_epoch_end`, `on_train_end`) with
        `model.fit`'s logs, and may set `model.stop_training`. On a resumed epoch,
        `on_epoch_begin` is called again: the DnC callbacks see that its re-clustering is done.
        A non-finite step (`DnCModel`'s `nonfinite` count, checked before each checkpoint and at
        the epoch's end) stops training without a checkpoint; `nan_at` then holds (epoch, step).
        """
        model, sampler = self.model, self.sampler
        start_epoch, start_step = start if start is not None else self.restore()
        # The papers' epoch changes length: its bar reads the sampler's steps each epoch.
        callbacks = keras.callbacks.CallbackList(
            with_cluster_epoch_progbar(callbacks, sampler, epochs, verbose), add_history=True,
            add_progbar=verbose != 0, model=model, verbose=verbose, epochs=epochs,
            steps=sampler.steps)
        history = next(c for c in callbacks.callbacks if isinstance(c, keras.callbacks.History))
        model.stop_training = False
        train_fn = self._train_step()
        with self._sharded_embedding():
            callbacks.on_train_begin()
            logs = {}
            for epoch in range(start_epoch, epochs):
                skip = start_step if epoch == start_epoch else 0
                if not skip:  # a resumed epoch continues the running means it checkpointed
                    model.reset_metrics()
                callbacks.on_epoch_begin(epoch)
                self._broadcast_clusters()
                epoch_state = sampler.get_state()
                iterator = iter(self._dataset)
                for _ in range(skip):  # the dataset replays the whole epoch: fast-forward
                    next(iterator)
                stopped = False
                for step in range(skip, sampler.steps):
                    callbacks.on_train_batch_begin(step)
                    # Tensors, as model.fit passes them: reading one waits for the step, so
                    # the loss is only checked where the loop must wait anyway.
                    logs = train_fn(iterator)
                    callbacks.on_train_batch_end(step, logs)
                    save = self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 \
                        and step + 1 < sampler.steps
                    if (save or step + 1 == sampler.steps) and (
                            float(logs.get("nonfinite", 0.0)) > 0
                            or not np.isfinite(float(logs.get("loss", 0.0)))):
                        self.nan_at = (epoch, step)
                        model.stop_training = True  # as keras.callbacks.TerminateOnNaN
                    # Stopped inside the epoch (a NaN loss, say): keep the last checkpoint.
                    stopped = model.stop_training
                    if stopped:
                        break
                    if save:
                        self._save(epoch, step + 1, epoch_state)
                logs = {k: float(v) for k, v in logs.items()}
                callbacks.on_epoch_end(epoch, dict(logs))
                if not stopped:
                    self._save(epoch + 1, 0, sampler.get_state(), logs)
                if model.stop_training:
                    break
            callbacks.on_train_end(logs)
        return history

    @contextlib.contextmanager
    def _sharded_embedding(self):
        """While training, callbacks' `model.embed` runs sharded over all replicas."""
        if self.replicas == 1:
            yield
            return
        self.model.embed = self.embed
        try:
            yield
        finally:
            del self.model.embed


def _shard_by_batch_split(dataset):
    # Every worker must see every global batch and keep its replicas' share of it (what
    # experimental_distribute_dataset's rebatching does), never whole batches of its own.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
