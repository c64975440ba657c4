import os

import keras
import numpy as np
import pytest
from events import scalars

from dnc_keras.backbones import build_encoder
from dnc_keras.callbacks import DivergenceGuard, DnCScheduleCallback, RetrievalEvaluation
from dnc_keras.training.checkpoints import EpochCheckpoint, TrainingState
from dnc_keras.evaluation import retrieval_metrics
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import TripletHardLoss
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.schedule import DnCSchedule


def _data(classes=12, per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 10))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + 0.5 * rng.normal(size=(len(y), 10))
    return x.reshape(len(y), 10, 1, 1).astype(np.float32), y


def _model(k=2, lr=1e-2, initial=None):
    backbone = keras.Sequential([keras.Input((10, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    model = DnCModel(build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False),
                     SubspaceMasks(8, k, initial_learners=initial))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=TripletHardLoss(margin=0.2))
    return model


def test_recluster_matches_new_clusters_to_old_learners():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(12), 6)
    groups = 8.0 * rng.normal(size=(4, 10))  # 4 far-apart groups of 3 classes each
    x = (groups[y // 3] + rng.normal(size=(12, 10))[y] + 0.1 * rng.normal(size=(72, 10)))
    x = x.reshape(72, 10, 1, 1).astype(np.float32)
    keras.utils.set_random_seed(0)  # an unseeded network failed this now and then (CI order)
    model = _model(k=4)
    sampler = ClusterBatchSampler(y, 3, 2)
    callback = DnCScheduleCallback(sampler, x, DnCSchedule(6, 4, 4, period=1), verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    first = sampler.assignment.copy()
    assert sampler.num_clusters == 4 and len(set(first)) == 4
    for epoch in range(1, 6):  # other k-means seeds, same partition: ids must not move
        callback.on_epoch_begin(epoch)
        np.testing.assert_array_equal(sampler.assignment, first)
        assert sampler.updated_at_epoch == epoch
    assert [o["action"] for o in callback.outcomes] == ["cluster"] + ["recluster"] * 5


def test_cvpr_conquer_merges_clusters_and_stops_reclustering():
    x, y = _data()
    model = _model(k=2)
    sampler = ClusterBatchSampler(y, 3, 2)
    callback = DnCScheduleCallback(
        sampler, x, DnCSchedule(4, 2, 2, period=1, conquer_epoch=2, conquer_mode="cvpr"),
        verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(2):
        callback.on_epoch_begin(epoch)
    assert not model.is_conquered and sampler.num_clusters == 2
    callback.on_epoch_begin(2)
    callback.on_epoch_begin(3)
    assert model.is_conquered and sampler.num_clusters == 1
    assert np.all(sampler.assignment == 0)
    assert [(o["epoch"], o["action"]) for o in callback.outcomes] == [
        (0, "cluster"), (1, "recluster"), (2, "conquer")]  # no re-clustering after a merge


def test_a_failed_clustering_keeps_the_previous_clusters_and_says_so():
    """Two learners need two clusters of 2 classes each with 2 images: 3 classes cannot."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 4)
    x = rng.normal(size=(12, 10, 1, 1)).astype(np.float32)
    model = _model(k=2, initial=1)
    sampler = ClusterBatchSampler(y, 2, 2)
    callback = DnCScheduleCallback(sampler, x, DnCSchedule(4, 2, 1, period=2), verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.warns(UserWarning, match="kept the previous clusters"):
        callback.on_epoch_begin(2)
    (outcome,) = callback.outcomes
    assert outcome["action"] == "divide" and outcome["learners"] == 1
    assert outcome["status"].startswith("kept the previous clusters")
    assert model.active_learners == 1 and sampler.num_clusters == 1


def test_every_executed_action_is_one_the_schedule_planned():
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = _model(k=4, initial=1)
    sampler = ClusterBatchSampler(y, 3, 2, steps_per_epoch=2)
    schedule = DnCSchedule(7, 4, 1, period=2, conquer_epoch=6)
    callback = DnCScheduleCallback(sampler, x, schedule, verbose=0)
    history = model.fit(sampler.as_dataset(x), epochs=7, callbacks=[callback], verbose=0)
    executed = [(o["epoch"], o["action"], o["planned_learners"]) for o in callback.outcomes]
    planned = [(a.epoch, a.kind, a.learners) for a in schedule.actions()]
    assert executed == planned == [(2, "divide", 2), (4, "divide", 4), (6, "recluster", 4),
                                   (6, "conquer", 4)]
    # The history logs the K each epoch trained with: the K the last action reached (a
    # division whose k-means finds no acceptable split keeps the previous K, and says so).
    reached, expected = 1, []
    for epoch in range(7):
        for outcome in callback.outcomes:
            if outcome["epoch"] == epoch and outcome["action"] in ("divide", "cluster"):
                assert outcome["status"] == "done" or outcome["status"].startswith("kept")
                reached = outcome["learners"]
        expected.append(reached)
    assert history.history["learners"] == expected


def test_retrieval_evaluation_logs_metrics_into_history(tmp_path):
    x, y = _data()
    model = _model(k=1)
    sampler = ClusterBatchSampler(y, 3, 2)
    evaluation = RetrievalEvaluation(x, y, every=1, ks=(1, 2), log_dir=str(tmp_path))
    history = model.fit(sampler.as_dataset(x), epochs=2, callbacks=[evaluation], verbose=0)
    assert len(history.history["val_R@1"]) == 2
    expected = retrieval_metrics(model.embed(x), y, ks=(1, 2))
    assert history.history["val_MAP@R"][-1] == pytest.approx(expected["MAP@R"])
    logged = scalars(tmp_path / "retrieval")  # what TensorBoard shows, epoch by epoch
    assert sorted(logged["MAP@R"]) == [(1, pytest.approx(history.history["val_MAP@R"][0])),
                                       (2, pytest.approx(expected["MAP@R"]))]
    assert [v for _, v in sorted(logged["R@2"])] == pytest.approx(history.history["val_R@2"])


class _PoisonableLoss(keras.losses.Loss):
    """TripletHardLoss that turns NaN once `poisoned` is set, as a diverging run would."""

    def __init__(self):
        super().__init__(name="poisonable")
        self.inner = TripletHardLoss(margin=0.2)
        self.poisoned = keras.Variable(0.0, trainable=False)

    def call(self, y_true, y_pred):
        value = self.inner(y_true, y_pred)
        return keras.ops.where(self.poisoned > 0, np.float32(np.nan), value)


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _data()
    model = _model(k=1)
    loss = _PoisonableLoss()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    sampler = ClusterBatchSampler(y, 3, 2, steps_per_epoch=4)
    state = TrainingState(model, sampler, str(tmp_path / "checkpoints"))
    guard = DivergenceGuard(verbose=0)
    checkpoint = EpochCheckpoint(state, lambda epoch, logs: {"epoch": epoch})
    good = {}

    class PoisonAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                good["weights"] = self.model.get_weights()
                loss.poisoned.assign(1.0)

    history = model.fit(sampler.as_dataset(x), epochs=5,
                        callbacks=[guard, checkpoint, PoisonAfterSecondEpoch()], verbose=0)
    assert guard.diverged_at == (2, 0)
    assert len(history.history["loss"]) == 3  # stopped in the third epoch
    assert history.history["nonfinite"] == [0.0, 0.0, 1.0]
    # A fresh model restores the weights of the last finite epoch, not the diverged ones.
    restored = _model(k=1)
    restored_state = TrainingState(restored, ClusterBatchSampler(y, 3, 2, steps_per_epoch=4),
                                   str(tmp_path / "checkpoints"))
    epoch, step, record = restored_state.restore()
    assert (epoch, step, record) == (2, 0, {"epoch": 1})
    for a, b in zip(restored.get_weights(), good["weights"]):
        np.testing.assert_array_equal(a, b)


def test_nan_embedding_is_seen_even_when_the_loss_masks_it():
    """A NaN input makes NaN embeddings; the hard-mining masks could turn that into a finite
    loss, so the step's `nonfinite` count is what must flag it."""
    x, y = _data()
    model = _model(k=1)
    sampler = ClusterBatchSampler(y, 3, 2, steps_per_epoch=2)
    x = x.copy()
    x[:] = np.nan
    guard = DivergenceGuard(verbose=0)
    history = model.fit(sampler.as_dataset(x), epochs=3, callbacks=[guard], verbose=0)
    assert guard.diverged_at == (0, 0)
    assert history.history["nonfinite"] == [1.0]


@pytest.mark.parametrize("fresh", [False, True])
def test_a_division_splits_the_last_clusters_or_a_fresh_kmeans(fresh):
    """Two far-apart pairs of groups of 3 classes; the last clustering (K = 2) mixed them. A
    division that splits those clusters inherits the mix; one after a fresh k-means at K = 2
    (the pairs) gives each learner one group."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(12), 6)
    group = y // 3
    x = (40.0 * rng.normal(size=(2, 10))[group // 2] + 8.0 * rng.normal(size=(4, 10))[group]
         + rng.normal(size=(12, 10))[y] + 0.1 * rng.normal(size=(72, 10)))
    x = x.reshape(72, 10, 1, 1).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = _model(k=4, initial=2)
    sampler = ClusterBatchSampler(y, 2, 2)
    mixed = (y % 2).astype(np.int64)  # each old cluster holds half of every group
    sampler.set_clusters(mixed, 2, epoch=0)
    callback = DnCScheduleCallback(sampler, x, DnCSchedule(4, 4, 2, period=2), verbose=0,
                                   recluster_before_divide=fresh)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(2)
    assert [(o["action"], o["status"]) for o in callback.outcomes] == [("divide", "done")]
    new = sampler.assignment
    groups_per_cluster = [len(set(group[new == c])) for c in range(4)]
    if fresh:
        assert groups_per_cluster == [1, 1, 1, 1]
        # Each learner's children hold one pair: the fresh clusters were what was divided.
        assert {frozenset(group[new // 2 == p]) for p in range(2)} == {frozenset({0, 1}),
                                                                       frozenset({2, 3})}
    else:
        # The children of a mixed parent keep its classes: each is half of the parent's.
        for c in range(4):
            assert set(mixed[new == c]) == {c // 2}
