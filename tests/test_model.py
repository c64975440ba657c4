import keras
import numpy as np
import pytest

from dnc_keras.backbones import build_encoder, conv4
from dnc_keras.callbacks import dnc_callbacks
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import TripletHardLoss
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler


def _blobs(classes=16, per_class=8, dim=12, seed=0):
    """Images [N, dim, 1, 1] around one random centre per class: an easy metric problem."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + 0.6 * rng.normal(size=(len(y), dim))
    return x.reshape(len(y), dim, 1, 1).astype(np.float32), y


def _model(d=8, k=2, mode="fixed", initial=None, lr=1e-2):
    backbone = keras.Sequential([keras.Input((12, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    encoder = build_encoder(backbone, d, dropout=0.0, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(d, k, mode=mode, initial_learners=initial))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=TripletHardLoss(margin=0.2))
    return model


def _batch(x, y, learner, n=32):
    return {"images": x[:n], "learner": np.full(n, learner, np.int32)}, y[:n]


def test_train_step_updates_only_the_learners_block():
    x, y = _blobs()
    model = _model(d=8, k=2)
    kernel = model.encoder.get_layer("embedding").kernel
    before = kernel.numpy().copy()
    inputs, labels = _batch(x, y, learner=1)
    model.train_on_batch(inputs, labels)
    after = kernel.numpy()
    np.testing.assert_array_equal(after[:, :4], before[:, :4])
    assert np.abs(after[:, 4:] - before[:, 4:]).max() > 0


def test_conquer_trains_full_embedding_and_freezes_masks():
    x, y = _blobs()
    model = _model(d=8, k=2, mode="learned", initial=2)
    inputs, labels = _batch(x, y, learner=0)
    model.train_on_batch(inputs, labels)
    masks = model.subspaces.masks.numpy().copy()
    assert not np.allclose(masks[0], 1.0)  # masks train before conquer
    model.conquer()
    kernel = model.encoder.get_layer("embedding").kernel
    before = kernel.numpy().copy()
    model.train_on_batch(inputs, labels)
    np.testing.assert_array_equal(model.subspaces.masks.numpy(), masks)
    assert np.abs(kernel.numpy()[:, 4:] - before[:, 4:]).max() > 0  # block 1 trains too


def test_divide_copies_masks_and_restarts_mask_optimizer():
    x, y = _blobs()
    model = _model(d=8, k=4, mode="learned", initial=2)
    model.train_on_batch(*_batch(x, y, learner=1))
    parent = model.subspaces.masks.numpy()[1].copy()
    model.divide()
    assert model.active_learners == 4
    np.testing.assert_array_equal(model.subspaces.masks.numpy()[2], parent)
    np.testing.assert_array_equal(model.subspaces.masks.numpy()[3], parent)
    slots = [v for v in model.mask_optimizer.variables if tuple(v.shape) == (4, 8)]
    assert slots and all(np.all(v.numpy() == 0) for v in slots)
    assert float(model.mask_optimizer.learning_rate) == pytest.approx(1.0)


def test_short_fit_lowers_loss_divides_and_reclusters():
    x, y = _blobs()
    model = _model(d=8, k=2, initial=1)
    sampler = ClusterBatchSampler(y, classes_per_batch=4, samples_per_class=4, seed=0)
    callbacks = dnc_callbacks(sampler, x, period=2, conquer_epoch=5, verbose=0)
    history = model.fit(sampler.as_dataset(x), epochs=6, callbacks=callbacks, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    (schedule,) = callbacks
    assert [(o["epoch"], o["action"]) for o in schedule.outcomes] == [
        (2, "divide"), (4, "recluster"), (5, "conquer")]
    assert model.active_learners == 2 and sampler.num_clusters == 2
    assert sampler.updated_at_epoch == 4 and model.is_conquered
    assert set(np.unique(sampler.assignment)) == {0, 1}


def test_predict_is_normalised_and_save_load_round_trips(tmp_path):
    x, y = _blobs()
    model = _model(d=8, k=4, mode="learned", initial=2)
    model.train_on_batch(*_batch(x, y, learner=1))
    model.divide()
    model.conquer()
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), out, rtol=1e-5, atol=1e-6)
    assert loaded.active_learners == 4 and loaded.is_conquered
    assert isinstance(loaded.learner_loss, TripletHardLoss)
    loaded.train_on_batch(*_batch(x, y, learner=0))  # a loaded model trains on


def test_conv4_encoder_outputs_features_and_embedding():
    encoder = build_encoder(conv4((28, 28, 1)), 32, freeze_bn_stats=False)
    f, z = encoder(np.zeros((2, 28, 28, 1), np.float32))
    assert f.shape == (2, 64) and z.shape == (2, 32)


def test_compile_needs_a_loss():
    model = _model()
    with pytest.raises(ValueError, match="metric-learning loss"):
        model.compile(optimizer="adam")


def test_frozen_bn_statistics_stay_while_scale_and_shift_train():
    encoder = build_encoder(conv4((16, 16, 1), ), 8, dropout=0.0, freeze_bn_stats=True)
    model = DnCModel(encoder, SubspaceMasks(8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TripletHardLoss(margin=0.2))
    bn = encoder.get_layer("frozen_bn").backbone.get_layer("bn0")
    stats = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    gamma = bn.gamma.numpy().copy()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 16, 16, 1)).astype(np.float32)
    y = np.repeat(np.arange(4), 4)
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stats[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), stats[1])
    assert np.abs(bn.gamma.numpy() - gamma).max() > 0
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(x, training=True)[1], encoder(x, training=False)[1],
                               rtol=1e-5, atol=1e-6)


def test_evaluate_is_the_loss_on_the_predicted_embedding():
    x, y = _blobs()
    model = _model(d=8, k=2)
    loss = model.evaluate(x[:32], y[:32], batch_size=32, verbose=0, return_dict=True)["loss"]
    expected = TripletHardLoss(margin=0.2)(y[:32], model.predict(x[:32], verbose=0))
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_resnet50_backbone_builds_without_downloading():
    from dnc_keras.backbones import resnet50

    encoder = build_encoder(resnet50((64, 64, 3), weights=None), 32)
    f, z = encoder(np.zeros((1, 64, 64, 3), np.float32))
    assert f.shape == (1, 2048) and z.shape == (1, 32)
