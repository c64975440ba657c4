"""DistributedTrainer in this process (one device): checkpoint contents, resume, errors, job."""

import json

import numpy as np
import pytest
import tensorflow as tf

from dnc_keras import cli
from dnc_keras.training import distributed
from dnc_keras.callbacks import dnc_callbacks
from dnc_keras.training.config import TrainConfig
from dnc_keras.layers import SubspaceMasks
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler

import dist_worker


def _setup(tmp_path=None, **kwargs):
    x, y = dist_worker.blobs()
    model = dist_worker.build_model(tf.distribute.get_strategy())
    sampler = ClusterBatchSampler(y, 4, 4, seed=0, steps_per_epoch=dist_worker.STEPS)
    callbacks = dnc_callbacks(sampler, x, period=2, conquer_epoch=4, backend="sklearn",
                              verbose=0)
    checkpoints = None if tmp_path is None else str(tmp_path / "checkpoints")
    trainer = distributed.DistributedTrainer(model, sampler, sampler.as_dataset(x),
                                             checkpoint_dir=checkpoints, **kwargs)
    return trainer, callbacks


def test_checkpoint_restores_model_optimizers_progress_and_clusters(tmp_path):
    trainer, callbacks = _setup(tmp_path, checkpoint_every=3)
    history = trainer.fit(3, callbacks=callbacks, verbose=0)
    assert len(history.history["loss"]) == 3
    model, sampler = trainer.model, trainer.sampler
    assert model.active_learners == 2 and sampler.num_clusters == 2  # divided at epoch 2

    fresh, _ = _setup(tmp_path)
    assert fresh.restore() == (3, 0)
    assert str(fresh.restored_from).endswith("ckpt-12")
    for a, b in zip(fresh.model.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for optimizer in ("optimizer", "mask_optimizer"):
        for a, b in zip(getattr(fresh.model, optimizer).variables,
                        getattr(model, optimizer).variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert fresh.model.active_learners == 2
    state, restored = sampler.get_state(), fresh.sampler.get_state()
    np.testing.assert_array_equal(restored.pop("assignment"), state.pop("assignment"))
    assert restored == state


def test_finished_run_resumes_with_nothing_left_to_train(tmp_path):
    trainer, callbacks = _setup(tmp_path)
    trainer.fit(2, callbacks=callbacks, verbose=0)
    weights = trainer.model.get_weights()
    again, callbacks = _setup(tmp_path)
    history = again.fit(2, callbacks=callbacks, verbose=0)
    assert history.history == {}
    for a, b in zip(again.model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_get_clear_errors():
    x, y = dist_worker.blobs()
    model = dist_worker.build_model(tf.distribute.get_strategy())
    sampler = ClusterBatchSampler(y, 4, 4)
    dataset = sampler.as_dataset(x)
    with pytest.raises(ValueError, match="dataset must be a tf.data.Dataset"):
        distributed.DistributedTrainer(model, sampler, x)
    with pytest.raises(ValueError, match="image source must align"):
        sampler.as_dataset(x[:3])
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        distributed.DistributedTrainer(model, sampler, dataset, checkpoint_every=0)
    with pytest.raises(ValueError, match="strategy.scope"):
        distributed.DistributedTrainer(model, sampler, dataset,
                                       strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    uncompiled = DnCModel(model.encoder, SubspaceMasks(8, 2))
    with pytest.raises(ValueError, match="not compiled"):
        distributed.DistributedTrainer(uncompiled, sampler, dataset)
    with pytest.raises(ValueError, match="strategy must be one of"):
        distributed.make_strategy("tpu")


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="horovod"), "strategy=.horovod.: expected one of mirrored, multi-worker"),
    (dict(checkpoint_every=10), "checkpoint_every applies to the distributed loop"),
    (dict(strategy="multi-worker"), "needs out"),
    (dict(strategy="mirrored", seeds=3), "one process per seed"),
    (dict(strategy="mirrored", checkpoint_every=0), "checkpoint_every=0: expected an integer >= 1"),
])
def test_config_rejects_bad_strategy_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_cli_trains_with_the_mirrored_loop_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--learners", "2",
            "--embedding-dim", "16", "--classes-per-batch", "4", "--samples-per-class", "4",
            "--steps-per-epoch", "4", "--strategy", "mirrored", "--checkpoint-every", "3",
            "--no-plots", "--no-nmi", "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["replicas"] == 1 and "resumed_from" not in first
    assert (out / "checkpoints" / "checkpoint").exists() and (out / "model.keras").exists()
    written = (out / "model.keras").read_bytes()
    assert cli.main(argv) == 2  # the same command again: the finished run is kept
    recipe, *error = capsys.readouterr().err.strip().splitlines()  # --json: recipe on stderr
    assert recipe.startswith("digits recipe (")
    assert error == [f"dnc-keras train: error: {out} holds a finished run; pass --overwrite to "
                     "replace it, or choose another --out"]
    assert (out / "model.keras").read_bytes() == written
    assert cli.main([*argv, "--overwrite"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "resumed_from" not in again


def test_non_finite_loss_stops_training_without_a_checkpoint(tmp_path):
    trainer, _ = _setup(tmp_path, checkpoint_every=2)
    model = trainer.model
    model.compile(optimizer=model.optimizer, loss=lambda labels, embeddings:
                  tf.reduce_sum(embeddings) * np.nan)
    history = trainer.fit(3, verbose=0)
    assert trainer.nan_at == (0, 1)  # seen before the first checkpoint, at step 2
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert not (tmp_path / "checkpoints").exists()


def test_the_papers_epoch_follows_the_clusters_in_the_custom_loop(capsys):
    rng = np.random.default_rng(0)
    # Two far-apart groups of 4 and 12 classes: the division's clusters are unequal.
    y = np.repeat(np.arange(dist_worker.CLASSES), dist_worker.PER_CLASS)
    groups = 10 * rng.normal(size=(2, dist_worker.DIM))[(y >= 4).astype(int)]
    x = (groups + rng.normal(size=(dist_worker.CLASSES, dist_worker.DIM))[y]
         + 0.1 * rng.normal(size=groups.shape)).reshape(len(y), -1, 1, 1).astype(np.float32)
    model = dist_worker.build_model(tf.distribute.get_strategy())
    sampler = ClusterBatchSampler(y, 4, 4, seed=0, epoch_length="largest")
    callbacks = dnc_callbacks(sampler, x, period=2, backend="sklearn", verbose=0)
    trained, expected = {}, {}

    class Count(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # after the schedule's callback
            sizes = np.bincount(sampler.assignment[sampler.assignment >= 0])
            expected[epoch] = len(sizes) * max(1, sizes.max() // 16)  # K x largest // batch
            trained[epoch] = 0

        def on_train_batch_end(self, batch, logs=None):
            trained[max(trained)] += 1

    trainer = distributed.DistributedTrainer(model, sampler, sampler.as_dataset(x))
    trainer.fit(4, callbacks=callbacks + [Count()], verbose=2)
    assert sampler.num_clusters == 2 and trained == expected
    assert [trained[e] for e in range(4)] == [8, 8, 12, 12]  # K = 2: 2 x (96 // 16)
    # The progress bar counts each epoch to its own length.
    printed = capsys.readouterr().out
    assert "Epoch 2/4\n8/8 " in printed and "Epoch 3/4\n12/12 " in printed, printed
    assert int(model.optimizer.iterations) == sum(trained.values())
