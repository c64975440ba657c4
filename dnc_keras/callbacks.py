"""Callbacks for model.fit and the distributed loop: the DnC schedule, evaluation, checkpoints.

`DnCScheduleCallback` executes a `dnc_keras.schedule.DnCSchedule` at the start of each epoch,
before the epoch's batches are drawn: it reads embeddings from the model and writes cluster
assignments to the sampler, and nothing else does. Each planned action's outcome is recorded:
done, or the previous clusters kept and why (a clustering that finds no acceptable split never
ends a run).
"""

import math
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from dnc_keras import clustering
from dnc_keras.evaluation import retrieval_metrics
from dnc_keras.feature_bank import FeatureBank
from dnc_keras.schedule import DnCSchedule

CLUSTER_ON = ("features", "embedding")
FEATURE_SOURCES = ("pass", "training")


class DnCScheduleCallback(keras.callbacks.Callback):
    """Executes the divide-and-conquer schedule: cluster, divide, re-cluster, conquer.

    Args:
        sampler: the `ClusterBatchSampler` whose assignment the actions set.
        images: the sampler's training images (array or `dnc_keras.images.ImageFiles`), embedded
            to cluster.
        schedule: a `DnCSchedule`. Defaults to `None`: built at the start of training from the
            model's `SubspaceMasks` (K now and at the end), `fit`'s epochs and the arguments
            below.
        period: T, epochs between re-clusterings. Defaults to `2` (both papers).
        conquer_epoch: first epoch of the conquer phase. Defaults to `None` (none).
        conquer_mode: `"tpami"` or `"cvpr"` (see `DnCSchedule`). Defaults to `"tpami"`.
        cluster_on: `"features"` (L2-normalised backbone features, both official codes) or
            `"embedding"`. Defaults to `"features"`.
        seed: seed of the k-means runs; epoch e clusters with a seed derived from (seed, e).
            Defaults to `0`.
        backend: k-means backend (`dnc_keras.clustering.kmeans`). Defaults to `"auto"`.
        batch_size: images per embedding batch. Defaults to `256`.
        feature_source: `"pass"` embeds every training image in a separate inference pass
            (both official codes); `"training"` re-uses the features the train steps computed
            and embeds afresh only the images whose feature is older than the previous
            clustering and served it already (`FeatureBank`: faster, but training-mode,
            augmented and up to 2T epochs old).
            Defaults to `"pass"`.
        freeze_backbone_on_recluster: the backbone's learning rate is 0 on every T-th epoch,
            the epochs that re-cluster (TPAMI: every even epoch; `DnCModel.freeze_backbone`),
            and back on the others. Defaults to `False`.
        recluster_before_divide: a division first re-clusters by k-means at the current K
            (matched to the learners), then splits those clusters in two; otherwise it splits
            the clusters of the last clustering, T epochs old. Defaults to `False`.
        verbose: print one line per action. Defaults to `1`.

    Attributes:
        outcomes: one dict per executed action: epoch, action, K planned and reached, status
            (`"done"` or `"kept the previous clusters: <reason>"`), seconds, images embedded.
    """

    def __init__(self, sampler, images, schedule=None, period=2, conquer_epoch=None,
                 conquer_mode="tpami", cluster_on="features", seed=0, backend="auto",
                 batch_size=256, feature_source="pass", freeze_backbone_on_recluster=False,
                 recluster_before_divide=False, verbose=1):
        super().__init__()
        if cluster_on not in CLUSTER_ON:
            raise ValueError(f"cluster_on must be one of {CLUSTER_ON}. Received: {cluster_on!r}")
        if feature_source not in FEATURE_SOURCES:
            raise ValueError(f"feature_source must be one of {FEATURE_SOURCES}. Received: "
                             f"{feature_source!r}")
        if feature_source == "training" and cluster_on != "features":
            raise ValueError("feature_source='training' keeps backbone features; it needs "
                             f"cluster_on='features'. Received: cluster_on={cluster_on!r}")
        if period < 1:
            raise ValueError(f"period must be >= 1. Received: period={period}")
        self.sampler = sampler
        self.images = images
        self.schedule = schedule
        self.period = int(period)
        self.conquer_epoch = conquer_epoch
        self.conquer_mode = conquer_mode
        self.cluster_on = cluster_on
        self.seed = int(seed)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.feature_source = feature_source
        self.freeze_backbone_on_recluster = bool(freeze_backbone_on_recluster)
        self.recluster_before_divide = bool(recluster_before_divide)
        self.verbose = verbose
        self.outcomes = []

    # -- the schedule --------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.schedule is None:
            epochs = (self.params or {}).get("epochs")
            if not epochs:
                raise ValueError("DnCScheduleCallback needs a schedule, or fit's epochs")
            # A resumed model may already hold more learners: plan from K at the start.
            start = self.model.subspaces.initial_learners
            self.schedule = DnCSchedule(int(epochs), int(self.model.subspaces.max_learners),
                                        int(start), self.period, self.conquer_epoch,
                                        self.conquer_mode)
        if self.schedule.final_learners != self.model.subspaces.max_learners:
            raise ValueError(f"The schedule ends with {self.schedule.final_learners} learners "
                             f"but the model's SubspaceMasks hold "
                             f"{self.model.subspaces.max_learners}")
        if self.feature_source == "training":
            bank = self.model.feature_bank
            if bank is None or bank.num_images != len(self.images):
                dim = self.model.embed(self.images[:1], output="features").shape[1]
                self.model.attach_feature_bank(FeatureBank(len(self.images), dim))

    def on_epoch_begin(self, epoch, logs=None):
        if self.freeze_backbone_on_recluster:
            self.model.freeze_backbone(self._reclustering_epoch(epoch))
        for action in self.schedule.at(epoch):
            if self._done(action):
                continue
            start = time.perf_counter()
            self._embedded = 0
            status, reached = getattr(self, f"_{action.kind}")(action)
            outcome = {"epoch": epoch, "action": action.kind, "planned_learners":
                       action.learners, "learners": reached, "status": status,
                       "seconds": round(time.perf_counter() - start, 3),
                       "embedded": self._embedded,
                       "cluster_sizes": [n for n, _ in self.sampler.cluster_sizes()],
                       "cluster_classes": [c for _, c in self.sampler.cluster_sizes()]}
            self.outcomes.append(outcome)
            self._log(outcome)

    def _reclustering_epoch(self, epoch):
        """TPAMI's epochs of backbone learning rate 0: every T-th epoch (T = 2 there: every even
        epoch), the epochs the schedule re-clusters, until CVPR's conquer phase, where
        re-clustering stops. One learner has nothing to cluster; it freezes the same epochs, so
        that a single learner can be compared with the option on."""
        schedule = self.schedule
        conquered = schedule.conquer_mode == "cvpr" and schedule.conquer_epoch is not None \
            and epoch >= schedule.conquer_epoch
        return epoch % schedule.period == 0 and not conquered

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learners"] = float(self.model.active_learners)

    def _done(self, action):
        """On a resumed epoch the sampler and model already hold its actions' results."""
        if action.kind == "conquer":
            return self.model.is_conquered
        return self.sampler.updated_at_epoch == action.epoch

    # -- the actions ---------------------------------------------------------------------
    def _cluster(self, action):
        return self._kmeans(action, match=False)

    def _recluster(self, action):
        return self._kmeans(action, match=True)

    def _kmeans(self, action, match):
        k = action.learners
        try:
            new = self._clustered(lambda features: clustering.cluster(
                features, self.sampler.labels, k, seed=self._seed(action), backend=self.backend))
        except clustering.ClusteringError as error:
            return self._kept(error), self.sampler.num_clusters
        if match and self.sampler.num_clusters == k:
            new = clustering.match_clusters(new, self.sampler.assignment, k)
        self.sampler.set_clusters(new, k, action.epoch)
        return "done", k

    def _divide(self, action):
        k = self.model.active_learners
        labels, seed = self.sampler.labels, self._seed(action)

        def divided(features):
            parents = self.sampler.assignment
            if self.recluster_before_divide and k > 1:
                parents = clustering.match_clusters(clustering.cluster(
                    features, labels, k, seed=seed, backend=self.backend), parents, k)
            return clustering.divide_clusters(features, labels, parents, seed=seed,
                                              backend=self.backend)

        try:
            new = self._clustered(divided)
        except clustering.ClusteringError as error:
            return self._kept(error), k
        self.model.divide()
        self.sampler.set_clusters(new, 2 * k, action.epoch)
        return "done", 2 * k

    def _conquer(self, action):
        self.model.conquer()
        if self.schedule.conquer_mode == "cvpr":
            self.sampler.set_clusters(np.zeros(len(self.sampler.labels), np.int64), 1,
                                      action.epoch)
        return "done", action.learners

    def _kept(self, error):
        message = f"kept the previous clusters: {error}"
        warnings.warn(f"[dnc] {message}", stacklevel=3)
        return message

    def _seed(self, action):
        """A k-means seed of its own per (run seed, epoch): seeds s and s + 1 share none."""
        return int(np.random.SeedSequence([self.seed, action.epoch, KMEANS_STREAM])
                   .generate_state(1)[0] % (2 ** 31))

    # -- embeddings ----------------------------------------------------------------------
    def _clustered(self, fn):
        """fn(features) -> assignment. Where the bank's features (training-mode, mixed with
        fresh inference-mode ones) admit no acceptable clustering, retries on a full pass."""
        try:
            return fn(self._features())
        except clustering.ClusteringError as error:
            if self.feature_source != "training" or self.model.feature_bank is None:
                raise
            self._log_text(f"{error} on the train steps' features; clustering a full pass "
                           "instead")
            return fn(self._embed(np.arange(len(self.images))))

    def _features(self):
        bank = self.model.feature_bank if self.feature_source == "training" else None
        if bank is None:
            return self._embed(np.arange(len(self.images)))
        features, _ = bank.read(self._embed)
        return features

    def _embed(self, indices):
        self._embedded += len(indices)
        images = self.images if len(indices) == len(self.images) else self.images[indices]
        return self.model.embed(images, output=self.cluster_on, batch_size=self.batch_size)

    def _log(self, outcome):
        if not self.verbose:
            return
        sizes = outcome["cluster_sizes"]
        self._log_text(f"epoch {outcome['epoch']}: {outcome['action']} -> K="
                       f"{outcome['learners']} in {outcome['seconds']:.1f}s ({outcome['status']}"
                       f"); {outcome['embedded']} images embedded; cluster sizes {sizes}")

    def _log_text(self, message):
        if self.verbose:
            print(f"\n[dnc] {message}", flush=True)


# Purpose of the k-means stream among a run's random streams (see dnc_keras.sampling).
KMEANS_STREAM = 2


class RetrievalEvaluation(keras.callbacks.Callback):
    """R@K, MAP@R and NMI of held-out images every `every` epochs, into logs and TensorBoard.

    Put it before any callback that reads the logs (checkpoints, TensorBoard, CSVLogger);
    Keras's History always comes last and records the metrics as `prefix + name`.
    """

    def __init__(self, images, labels, every=1, ks=(1, 2, 4, 8), nmi=True, prefix="val_",
                 log_dir=None, batch_size=256):
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels)
        self.every = int(every)
        self.ks = tuple(ks)
        self.nmi = nmi
        self.prefix = prefix
        self.batch_size = batch_size
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "retrieval")) \
            if log_dir else None
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        last = self.params and epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        embeddings = self.model.embed(self.images, batch_size=self.batch_size)
        metrics = retrieval_metrics(embeddings, self.labels, ks=self.ks, nmi=self.nmi)
        self.history.append({"epoch": epoch + 1, **metrics})
        if logs is not None:
            logs.update({self.prefix + k: v for k, v in metrics.items()})
        if self.writer is not None:
            with self.writer.as_default(step=epoch + 1):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
            self.writer.flush()


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the step whose embeddings, loss or gradients are not finite.

    `DnCModel.train_step` counts such steps in its `nonfinite` metric; the guard reads it after
    every batch, stops `fit` (or the distributed loop) there, and leaves `diverged_at` =
    (epoch, step). The run's last checkpoint, written after the last finite epoch, stays.
    """

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = verbose
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        bad = float(logs.get("nonfinite", 0.0)) > 0
        loss = logs.get("loss")
        bad = bad or (loss is not None and not math.isfinite(float(loss)))
        if bad and self.diverged_at is None:
            self.diverged_at = (self._epoch, batch)
            self.model.stop_training = True
            if self.verbose:
                print(f"\n[dnc] non-finite embeddings, loss or gradients at epoch "
                      f"{self._epoch} step {batch}: training stops", flush=True)


class ClusterEpochProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar for epochs whose length follows the clusters (the papers' epoch,
    `ClusterBatchSampler(epoch_length="largest")`).

    Each epoch's bar counts to the sampler's steps as they are once the schedule has
    re-clustered (place it after `DnCScheduleCallback`), and epochs are numbered out of the
    run's `epochs`, also when `fit` runs one epoch per call
    (`dnc_keras.training.job.fit_epochs`).
    """

    def __init__(self, sampler, epochs):
        super().__init__()
        self.sampler = sampler
        self.run_epochs = int(epochs)

    def set_params(self, params):
        super().set_params({**params, "epochs": self.run_epochs})

    def on_epoch_begin(self, epoch, logs=None):
        self.target = self.sampler.steps
        super().on_epoch_begin(epoch, logs)


def with_cluster_epoch_progbar(callbacks, sampler, epochs, verbose):
    """`callbacks` with a `ClusterEpochProgbar` last where the sampler's epochs follow its
    clusters, progress is shown and no progress bar was given; else `callbacks` as a list."""
    callbacks = list(callbacks or [])
    if not verbose or sampler.epoch_length == "fixed" or any(
            isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        return callbacks
    return [*callbacks, ClusterEpochProgbar(sampler, epochs)]


def dnc_callbacks(sampler, images, period=2, conquer_epoch=None, conquer_mode="tpami",
                  cluster_on="features", seed=0, backend="auto", feature_source="pass",
                  verbose=1, schedule=None, recluster_before_divide=False):
    """The DnC schedule's callback, as a list to extend with others. K comes from the model's
    `SubspaceMasks` (learners now and `max_learners` at the end); see `DnCScheduleCallback`."""
    return [DnCScheduleCallback(sampler, images, schedule=schedule, period=period,
                                conquer_epoch=conquer_epoch, conquer_mode=conquer_mode,
                                cluster_on=cluster_on, seed=seed, backend=backend,
                                feature_source=feature_source,
                                recluster_before_divide=recluster_before_divide,
                                verbose=verbose)]
