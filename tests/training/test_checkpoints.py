"""TrainingState: everything that decides the rest of a run goes into a checkpoint and comes
back, and an unreadable checkpoint is named and skipped."""

import glob
import os

import keras
import numpy as np
import pytest

from dnc_keras.backbones import build_encoder
from dnc_keras.feature_bank import FeatureBank
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import MarginLoss, TripletHardLoss
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.training.checkpoints import TrainingState


def _data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 6)
    x = rng.normal(size=(len(y), 6, 1, 1)).astype(np.float32) + y[:, None, None, None]
    return x, y


def _model(loss=None):
    backbone = keras.Sequential([keras.Input((6, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(12, activation="relu")])
    # Dropout on: its seed generator's state is part of what must come back.
    model = DnCModel(build_encoder(backbone, 8, dropout=0.2, freeze_bn_stats=False),
                     SubspaceMasks(8, 2, mode="learned"))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=loss or TripletHardLoss(margin=0.2))
    return model


def _trained(tmp_path, epochs=2, loss=None):
    x, y = _data()
    model = _model(loss)
    sampler = ClusterBatchSampler(y, 4, 2, steps_per_epoch=3, seed=3)
    state = TrainingState(model, sampler, str(tmp_path / "checkpoints"))
    for epoch in range(epochs):
        model.fit(sampler.as_dataset(x), epochs=1, verbose=0)
        sampler.set_clusters(np.arange(len(y)) % 2, 2, epoch)
        state.save(epoch + 1, 0, sampler.get_state(), {"epoch": epoch})
    return model, sampler


def _fresh(tmp_path, loss=None):
    _, y = _data()
    model = _model(loss)
    sampler = ClusterBatchSampler(y, 4, 2, steps_per_epoch=3, seed=3)
    return model, sampler, TrainingState(model, sampler, str(tmp_path / "checkpoints"))


def test_round_trip_of_every_variable_and_the_sampler(tmp_path):
    model, sampler = _trained(tmp_path)
    fresh, fresh_sampler, state = _fresh(tmp_path)
    assert state.restore() == (2, 0, {"epoch": 1})
    for mine, theirs in [(model.variables, fresh.variables),
                         (model.optimizer.variables, fresh.optimizer.variables),
                         (model.mask_optimizer.variables, fresh.mask_optimizer.variables)]:
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    seeds = [v for v in fresh.variables if "seed_generator_state" in v.path]
    assert seeds and int(np.asarray(seeds[0])[1]) > 0  # dropout had drawn: not the initial
    restored = fresh_sampler.get_state()
    for key, value in sampler.get_state().items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_round_trip_of_the_learned_betas_and_their_optimizer(tmp_path):
    """--learn-beta: the margin loss's betas (one per learner slot and the conquered one) and
    their own Adam's moments come back, so a resumed run steps them as the unstopped one."""
    def loss():
        return MarginLoss(beta=1.2, learn_beta=True, seed=0)

    model, _ = _trained(tmp_path, loss=loss())
    assert np.abs(model.margin_betas.numpy() - 1.2).max() > 1e-3  # trained, not the start
    fresh, _, state = _fresh(tmp_path, loss=loss())
    assert state.restore()[0] == 2
    np.testing.assert_array_equal(fresh.margin_betas.numpy(), model.margin_betas.numpy())
    mine, theirs = model.beta_optimizer.variables, fresh.beta_optimizer.variables
    assert len(mine) == len(theirs) > 1
    assert all(np.any(np.asarray(v) != 0) for v in mine)  # stepped: moments, not zeros
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_round_trip_of_the_feature_bank_with_which_rows_serve_once_more(tmp_path):
    """A resumed run's next re-clustering must embed the same images as the run that was not
    stopped: the bank's rows, what was written since the last read and what was new then."""
    _, y = _data()
    model, sampler = _model(), ClusterBatchSampler(y, 4, 2)
    model.attach_feature_bank(FeatureBank(len(y), 3))
    bank = model.feature_bank
    bank.write(np.arange(0, 10), np.ones((10, 3), np.float32))
    bank.read(lambda indices: np.full((len(indices), 3), 2.0, np.float32))
    bank.write(np.arange(5, 20), np.full((15, 3), 3.0, np.float32))
    TrainingState(model, sampler, str(tmp_path / "checkpoints")).save(1, 0, sampler.get_state(),
                                                                       {})
    fresh = _model()
    fresh.attach_feature_bank(FeatureBank(len(y), 3))
    assert TrainingState(fresh, ClusterBatchSampler(y, 4, 2),
                         str(tmp_path / "checkpoints")).restore()[0] == 1
    for mine, theirs in [(bank.features, fresh.feature_bank.features), (bank.seen,
                         fresh.feature_bank.seen), (bank.new_at_last_read,
                                                    fresh.feature_bank.new_at_last_read)]:
        np.testing.assert_array_equal(theirs.numpy(), mine.numpy())
    assert fresh.feature_bank.new_at_last_read.numpy().all()  # everything was new at that read


def test_corrupt_latest_checkpoint_is_named_and_the_previous_used(tmp_path):
    _trained(tmp_path)
    latest = sorted(glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.data-*")),
                    key=lambda p: int(p.split("ckpt-")[1].split(".")[0]))[-1]
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    _, _, state = _fresh(tmp_path)
    with pytest.warns(UserWarning, match=r"ckpt-6 cannot be read .*trying the one before"):
        assert state.restore() == (1, 0, {"epoch": 0})
    assert state.restored_from.endswith("ckpt-3")


def test_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
    _trained(tmp_path)
    for path in glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.data-*")):
        open(path, "wb").close()  # zero bytes
    _, _, state = _fresh(tmp_path)
    with pytest.warns(UserWarning), pytest.raises(ValueError) as error:
        state.restore()
    assert str(error.value) == (f"no checkpoint in {tmp_path / 'checkpoints'} can be read "
                                "(tried ckpt-6, ckpt-3); pass --overwrite to start the run "
                                "again")


def test_without_a_folder_nothing_is_saved_or_restored():
    x, y = _data()
    model = _model()
    state = TrainingState(model, ClusterBatchSampler(y, 4, 2))
    assert state.save(1, 0, {}, {}) is None and state.restore() is None
