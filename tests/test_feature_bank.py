import keras
import numpy as np
import pytest

from dnc_keras import clustering
from dnc_keras.backbones import build_encoder
from dnc_keras.callbacks import DnCScheduleCallback
from dnc_keras.feature_bank import FeatureBank
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import TripletHardLoss
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.schedule import DnCSchedule


def _data(classes=12, per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    groups = 6.0 * rng.normal(size=(4, 10))
    y = np.repeat(np.arange(classes), per_class)
    x = groups[y % 4] + rng.normal(size=(classes, 10))[y] + 0.3 * rng.normal(size=(len(y), 10))
    return x.reshape(len(y), 10, 1, 1).astype(np.float32), y


def _model(lr):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((10, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    model = DnCModel(build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False),
                     SubspaceMasks(8, 2))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=TripletHardLoss(margin=0.2))
    return model


class _RecordingSampler(ClusterBatchSampler):
    """Remembers the image indices of every epoch's batches."""

    drawn = None

    def epoch_batches(self):
        self.drawn = [] if self.drawn is None else self.drawn
        self.drawn.append(set())
        for indices, learner in super().epoch_batches():
            self.drawn[-1].update(indices.tolist())
            yield indices, learner


def _fit(source, lr=0.0, epochs=3):
    x, y = _data()
    model = _model(lr)
    sampler = _RecordingSampler(y, 3, 2, steps_per_epoch=5)
    recluster = DnCScheduleCallback(sampler, x, DnCSchedule(epochs, 2, 2, period=1),
                                    feature_source=source, verbose=0)
    model.fit(sampler.as_dataset(x), epochs=epochs, callbacks=[recluster], verbose=0)
    return x, model, sampler, recluster


def test_write_normalises_and_read_embeds_only_rows_older_than_the_previous_read():
    bank = FeatureBank(4, 2)
    bank.write(np.array([2, 0]), np.array([[3.0, 4.0], [0.0, -2.0]], np.float32))
    asked = []

    def embed(value):
        def fn(indices):
            asked.append(indices.tolist())
            return np.full((len(indices), 2), value, np.float32)
        return fn

    features, fresh = bank.read(embed(7.0))
    np.testing.assert_allclose(features, [[0, -1], [7, 7], [0.6, 0.8], [7, 7]], atol=1e-6)
    assert fresh == 2 and asked == [[1, 3]]
    # Nothing written since: every row was new at the previous read, so each serves once more.
    bank.write(np.array([3]), np.array([[1.0, 0.0]], np.float32))
    features, fresh = bank.read(embed(8.0))
    np.testing.assert_allclose(features, [[0, -1], [7, 7], [0.6, 0.8], [1, 0]], atol=1e-6)
    assert fresh == 0 and len(asked) == 1
    # Rows 0, 1 and 2 have now served two reads: embedded afresh; row 3 (new last read) kept.
    features, fresh = bank.read(embed(9.0))
    np.testing.assert_allclose(features, [[9, 9], [9, 9], [9, 9], [1, 0]], atol=1e-6)
    assert fresh == 3 and asked[-1] == [0, 1, 2]
    # The rows embedded afresh are stored: they serve the next read; row 3 is now too old.
    features, fresh = bank.read(embed(5.0))
    np.testing.assert_allclose(features, [[9, 9], [9, 9], [9, 9], [5, 5]], atol=1e-6)
    assert fresh == 1 and asked[-1] == [3]


def test_read_rejects_embeddings_of_the_wrong_shape():
    bank = FeatureBank(3, 2)
    with pytest.raises(ValueError, match="expected"):
        bank.read(lambda indices: np.zeros((len(indices), 5), np.float32))


def test_train_steps_fill_the_bank_with_the_encoders_features():
    # lr 0 and no BatchNorm or dropout: a training step's features are the inference pass's.
    x, model, sampler, recluster = _fit("training", epochs=3)
    bank = model.feature_bank
    last = np.array(sorted(sampler.drawn[-1]))
    np.testing.assert_array_equal(np.flatnonzero(bank.seen.numpy()), last)
    np.testing.assert_allclose(bank.features.numpy()[last],
                               model.embed(x[last], output="features"), atol=1e-5)
    # First clustering: all images; at epoch 1 none (every row was new at epoch 0); at epoch 2
    # those neither epoch 0 nor epoch 1 drew.
    embedded = [o["embedded"] for o in recluster.outcomes if o["action"] != "conquer"]
    assert embedded == [len(x), 0, len(x) - len(sampler.drawn[0] | sampler.drawn[1])]
    assert 0 < embedded[2] < len(x)


def test_training_features_give_the_clusters_of_a_full_pass_when_the_model_is_fixed():
    *_, pass_sampler, _ = _fit("pass")
    *_, bank_sampler, recluster = _fit("training")
    np.testing.assert_array_equal(bank_sampler.assignment, pass_sampler.assignment)
    assert sum(o["embedded"] for o in recluster.outcomes) < 3 * len(bank_sampler.labels)


def test_bank_stays_out_of_the_model_weights():
    _, model, *_ = _fit("training", lr=1e-2, epochs=1)
    assert model.feature_bank is not None
    names = [w.path for w in model.weights]
    assert not any("feature_bank" in name for name in names)


def test_training_features_need_backbone_features():
    x, y = _data()
    sampler = ClusterBatchSampler(y, 3, 2)
    with pytest.raises(ValueError, match="cluster_on='features'"):
        DnCScheduleCallback(sampler, x, cluster_on="embedding", feature_source="training")
    with pytest.raises(ValueError, match="feature_source must be one of"):
        DnCScheduleCallback(sampler, x, feature_source="cache")
    from dnc_keras.training.config import TrainConfig

    with pytest.raises(ValueError, match="cluster_on='features'"):
        TrainConfig(cluster_on="embedding", recluster_features="training")


def test_recluster_falls_back_to_a_full_pass_where_bank_features_admit_no_clustering():
    x, y = _data()
    model = _model(0.0)
    sampler = ClusterBatchSampler(y, 3, 2)
    recluster = DnCScheduleCallback(sampler, x, DnCSchedule(3, 2, 2, period=1),
                                    feature_source="training", verbose=0)
    recluster.set_model(model)
    recluster.on_train_begin()
    recluster.on_epoch_begin(0)  # empty bank: the first clustering embeds every image
    first = sampler.assignment.copy()
    # Every image "seen" with the same feature: k-means cannot split them into 2 clusters.
    model.feature_bank.write(np.arange(len(x)), np.ones((len(x), 16), np.float32))
    recluster.on_epoch_begin(1)
    assert [o["embedded"] for o in recluster.outcomes] == [len(x), len(x)]  # a full pass
    # What a full-pass re-clustering at epoch 1 gives.
    seed = recluster._seed(recluster.schedule.at(1)[0])
    expected = clustering.match_clusters(
        clustering.cluster(model.embed(x, output="features"), y, 2, seed=seed), first, 2)
    np.testing.assert_array_equal(sampler.assignment, expected)
