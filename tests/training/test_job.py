"""dnc_keras.training.job.fit_epochs: the papers' epoch trained through model.fit."""

import keras
import numpy as np

from dnc_keras.backbones import build_encoder
from dnc_keras.callbacks import DnCScheduleCallback
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import TripletHardLoss
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.schedule import DnCSchedule
from dnc_keras.training.job import fit_epochs


def _papers_epoch(assignment, labels, batch):
    """Independent count: K x (images of the largest cluster // batch)."""
    sizes = [np.sum(assignment == c) for c in np.unique(assignment)]
    return len(sizes) * max(1, max(sizes) // batch)


class _Steps(keras.callbacks.Callback):
    """Batches trained per epoch, and the papers' epoch of the clusters each one began with."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler, self.trained, self.expected = sampler, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.expected[epoch] = _papers_epoch(self.sampler.assignment, self.sampler.labels,
                                             self.sampler.batch_size)
        self.trained[epoch] = 0

    def on_train_batch_end(self, batch, logs=None):
        self.trained[max(self.trained)] += 1


def test_every_epoch_trains_the_papers_epoch_of_its_clusters(capsys):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # 3 tight groups of unequal size (2, 4 and 10 classes of 6 images): the clusters, and so
    # the papers' epoch, change length as K doubles.
    group = np.repeat([0] * 2 + [1] * 4 + [2] * 10, 6)
    y = np.repeat(np.arange(16), 6)
    x = (10 * rng.normal(size=(3, 10))[group] + rng.normal(size=(16, 10))[y]
         + 0.1 * rng.normal(size=(96, 10))).reshape(96, 10, 1, 1).astype(np.float32)
    backbone = keras.Sequential([keras.Input((10, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    model = DnCModel(build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False),
                     SubspaceMasks(8, 4, initial_learners=1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss(margin=0.2))
    sampler = ClusterBatchSampler(y, 2, 2, seed=0, epoch_length="largest")
    counter = _Steps(sampler)
    schedule = DnCScheduleCallback(sampler, x, DnCSchedule(5, 4, 1, period=2), verbose=0)
    fit_epochs(model, sampler.as_dataset(x), 5, initial_epoch=1,
               callbacks=[schedule, counter], verbose=2)
    assert [(o["epoch"], o["action"]) for o in schedule.outcomes] == [(2, "divide"),
                                                                       (4, "divide")]
    assert list(counter.trained) == [1, 2, 3, 4]
    assert counter.trained == counter.expected
    assert len(set(counter.trained.values())) > 1  # the length did change
    assert int(model.optimizer.iterations) == sum(counter.trained.values())
    printed = capsys.readouterr().out
    assert [f"Epoch {e}/5" in printed for e in range(1, 6)] == [False, True, True, True, True]
