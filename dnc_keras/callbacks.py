"""DnC callbacks for model.fit (and the distributed loop): re-cluster, divide, conquer, evaluate.

The callbacks read embeddings from the model and write cluster assignments to the sampler;
they act in `on_epoch_begin`, before the epoch's batches are drawn.
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dnc_keras import clustering
from dnc_keras.evaluation import retrieval_metrics
from dnc_keras.feature_bank import FeatureBank

CLUSTER_ON = ("features", "embedding")
FEATURE_SOURCES = ("pass", "training")


class _ClusterCallback(keras.callbacks.Callback):
    """Shared state of the callbacks that cluster the training set."""

    def __init__(self, sampler, images, period=2, cluster_on="features", seed=0,
                 backend="auto", batch_size=256, feature_source="pass", verbose=1):
        super().__init__()
        if cluster_on not in CLUSTER_ON:
            raise ValueError(f"cluster_on must be one of {CLUSTER_ON}; got {cluster_on!r}")
        if feature_source not in FEATURE_SOURCES:
            raise ValueError(f"feature_source must be one of {FEATURE_SOURCES}; "
                             f"got {feature_source!r}")
        if feature_source == "training" and cluster_on != "features":
            raise ValueError("feature_source='training' keeps backbone features; it needs "
                             f"cluster_on='features', got {cluster_on!r}")
        if period < 1:
            raise ValueError(f"period must be >= 1; got {period}")
        self.sampler = sampler
        self.images = images
        self.period = int(period)
        self.cluster_on = cluster_on
        self.seed = int(seed)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.feature_source = feature_source
        self.verbose = verbose
        self.seconds = []
        self.embedded = []  # images embedded by a forward pass, per (re-)clustering

    def on_train_begin(self, logs=None):
        if self.feature_source == "training":
            self._attach_bank()

    def _attach_bank(self):
        """One bank per model and training set, shared by the divide and re-cluster callbacks."""
        bank = self.model.feature_bank
        if bank is None or bank.num_images != len(self.images):
            dim = self.model.embed(self.images[:1], output="features").shape[1]
            self.model.attach_feature_bank(FeatureBank(len(self.images), dim))

    def _due(self, epoch):
        return (epoch > 0 and epoch % self.period == 0 and self.sampler.updated_at_epoch != epoch
                and not self.sampler.single_cluster)

    def _features(self):
        bank = self.model.feature_bank if self.feature_source == "training" else None
        if bank is None:
            self.embedded.append(len(self.images))
            return self._embed(np.arange(len(self.images)))
        features, fresh = bank.read(self._embed)
        self.embedded.append(fresh)
        return features

    def _cluster(self, fn):
        """fn(features) -> assignment. Where the bank's features (training-mode, mixed with
        fresh inference-mode ones) admit no acceptable clustering, retries on a full pass."""
        try:
            return fn(self._features())
        except clustering.ClusteringError as error:
            if self.feature_source != "training" or self.model.feature_bank is None:
                raise
            self._log(f"{error} on the train steps' features; clustering a full pass instead")
            self.embedded[-1] += len(self.images)
            return fn(self._embed(np.arange(len(self.images))))

    def _embed(self, indices):
        images = self.images if len(indices) == len(self.images) else self.images[indices]
        return self.model.embed(images, output=self.cluster_on, batch_size=self.batch_size)

    def _log(self, message):
        if self.verbose:
            print(f"\n[dnc] {message}", flush=True)


class ReclusterCallback(_ClusterCallback):
    """Every `period` epochs: k-means with the current K, matched to the old clusters.

    At the start of training, clusters the data once if the model has more than one learner.
    Args are those of the sampler's training images; `cluster_on="features"` clusters the
    L2-normalised backbone features (both official codes), `"embedding"` the embedding.
    `feature_source="pass"` embeds every training image in a separate inference pass (both
    official codes); `"training"` re-uses the features the train steps computed since the
    last re-clustering and embeds only the images no step drew (`FeatureBank`: faster, but
    training-mode, augmented and up to `period` epochs old).
    Defaults: `period=2` (T = 2 in both papers), `cluster_on="features"`,
    `feature_source="pass"`.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.model.active_learners > 1 and self.sampler.num_clusters != \
                self.model.active_learners:
            self.recluster(epoch=0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._due(epoch):
            self.recluster(epoch)

    def recluster(self, epoch):
        start = time.perf_counter()
        k = self.model.active_learners
        labels = self.sampler.labels
        new = self._cluster(lambda features: clustering.cluster(
            features, labels, k, seed=self.seed + epoch, backend=self.backend))
        old = self.sampler.assignment
        if self.sampler.num_clusters == k:
            new = clustering.match_clusters(new, old, k)
        self.sampler.set_clusters(new, k, epoch)
        self.seconds.append(time.perf_counter() - start)
        changed = float(np.mean(new != old))
        self._log(f"epoch {epoch}: re-clustered into {k} clusters in {self.seconds[-1]:.1f}s "
                  f"({changed:.0%} of images moved); sizes {self.sampler.cluster_sizes()}")


class DivideCallback(_ClusterCallback):
    """Progressive division (TPAMI): every `period` epochs while K < `final_learners`,
    splits every cluster in two by 2-means (children 2c, 2c+1) and doubles the learners.

    Put it before `ReclusterCallback`, which then skips the epochs this callback divided.
    """

    def __init__(self, sampler, images, final_learners, **kwargs):
        super().__init__(sampler, images, **kwargs)
        self.final_learners = int(final_learners)

    def on_epoch_begin(self, epoch, logs=None):
        if self._due(epoch) and self.model.active_learners < self.final_learners \
                and not self.model.is_conquered:
            self.divide(epoch)

    def divide(self, epoch):
        start = time.perf_counter()
        k = self.model.active_learners
        new = self._cluster(lambda features: clustering.divide_clusters(
            features, self.sampler.labels, self.sampler.assignment, seed=self.seed + epoch,
            backend=self.backend))
        self.model.divide()
        self.sampler.set_clusters(new, 2 * k, epoch)
        self.seconds.append(time.perf_counter() - start)
        self._log(f"epoch {epoch}: divided {k} -> {2 * k} learners in {self.seconds[-1]:.1f}s; "
                  f"sizes {self.sampler.cluster_sizes()}")


class ConquerCallback(keras.callbacks.Callback):
    """From `start_epoch` on, the loss sees the full embedding; masks freeze.

    `mode="tpami"` keeps per-cluster batches and re-clustering to the end; `mode="cvpr"`
    switches to K = 1 batches over all data (the sampler's single cluster) and stops
    re-clustering. Defaults to `"tpami"`.
    """

    def __init__(self, start_epoch, sampler=None, mode="tpami", verbose=1):
        super().__init__()
        if mode not in ("tpami", "cvpr"):
            raise ValueError(f"mode must be 'tpami' or 'cvpr'; got {mode!r}")
        if mode == "cvpr" and sampler is None:
            raise ValueError("mode='cvpr' needs the sampler, to merge its clusters")
        self.start_epoch = int(start_epoch)
        self.sampler = sampler
        self.mode = mode
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.start_epoch or self.model.is_conquered:
            return
        self.model.conquer()
        if self.mode == "cvpr":
            self.sampler.set_clusters(np.zeros(len(self.sampler.labels), np.int64), 1, epoch)
            self.sampler.single_cluster = True
        if self.verbose:
            print(f"\n[dnc] epoch {epoch}: conquer ({self.mode}): loss on the full embedding",
                  flush=True)


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


class FiniteCheckpoint(keras.callbacks.Callback):
    """Saves weights after each epoch whose loss is finite; stops training on a NaN loss.

    The file is written to a temporary name and renamed, so a crash mid-write or a NaN epoch
    never replaces the last good checkpoint. After a stop, `nan_at` holds (epoch, batch).
    """

    def __init__(self, filepath, verbose=1):
        super().__init__()
        if not filepath.endswith(".weights.h5"):
            raise ValueError(f"filepath must end in .weights.h5; got {filepath!r}")
        self.filepath = filepath
        self.verbose = verbose
        self.nan_at = None
        self.saved_epoch = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = (self._epoch, batch)
            self.model.stop_training = True
            if self.verbose:
                print(f"\n[dnc] loss is {float(loss)} at epoch {self._epoch} batch {batch}: "
                      f"training stops; last good checkpoint: {self.filepath} "
                      f"(epoch {self.saved_epoch})", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:
            return
        if not all(np.isfinite(w).all() for w in self.model.get_weights()):
            return
        tmp = self.filepath[: -len(".weights.h5")] + ".tmp.weights.h5"
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, self.filepath)
        self.saved_epoch = epoch + 1


def dnc_callbacks(sampler, images, final_learners, progressive=True, period=2,
                  conquer_epoch=None, conquer_mode="tpami", cluster_on="features", seed=0,
                  backend="auto", feature_source="pass", verbose=1):
    """The DnC schedule as a callback list in the right order: divide, re-cluster, conquer."""
    common = dict(period=period, cluster_on=cluster_on, seed=seed, backend=backend,
                  feature_source=feature_source, verbose=verbose)
    callbacks = []
    if progressive and final_learners > 1:
        callbacks.append(DivideCallback(sampler, images, final_learners, **common))
    if final_learners > 1:
        callbacks.append(ReclusterCallback(sampler, images, **common))
    if conquer_epoch is not None:
        callbacks.append(ConquerCallback(conquer_epoch, sampler, conquer_mode, verbose))
    return callbacks
