import keras
import numpy as np
import pytest

from dnc_keras.backbones import build_encoder, conv4
from dnc_keras.callbacks import DnCScheduleCallback, dnc_callbacks
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import MarginLoss, TripletHardLoss
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


def test_mask_weight_decay_adds_coupled_l2_to_the_mask_gradient():
    """With SGD, the decayed masks' step differs from the plain one by exactly
    -lr * decay * mask (PyTorch's coupled weight_decay), and the encoder's step not at all."""
    x, y = _blobs()
    steps = {}
    for decay in (0.0, 0.5):
        keras.utils.set_random_seed(3)
        backbone = keras.Sequential([keras.Input((12, 1, 1)), keras.layers.Flatten(),
                                     keras.layers.Dense(16, activation="relu")])
        encoder = build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False)
        model = DnCModel(encoder, SubspaceMasks(8, 2, mode="learned"), mask_weight_decay=decay)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TripletHardLoss(margin=0.2),
                      mask_optimizer=keras.optimizers.SGD(0.2))
        before = model.subspaces.masks.numpy().copy()
        model.train_on_batch(*_batch(x, y, learner=1))
        steps[decay] = (model.subspaces.masks.numpy() - before, before,
                        model.encoder.get_layer("embedding").kernel.numpy())
    (plain, before, kernel), (decayed, _, kernel_decayed) = steps[0.0], steps[0.5]
    np.testing.assert_allclose(decayed - plain, -0.2 * 0.5 * before, atol=1e-6)
    np.testing.assert_allclose(kernel_decayed, kernel, atol=1e-7)
    config = DnCModel.from_config(model.get_config()).get_config()
    assert config["mask_weight_decay"] == 0.5


def _margin_model(k=4, lr=1e-2):
    backbone = keras.Sequential([keras.Input((12, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    encoder = build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(8, k, mode="fixed", initial_learners=1))
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=MarginLoss(beta=1.2, learn_beta=True, seed=0))
    return model


def test_learned_beta_steps_only_the_batch_learners_slot(tmp_path):
    """One beta per learner slot and one for the conquered embedding: Adam's first step moves
    the batch's slot by its learning rate (m / sqrt(v) = sign of the gradient), no other;
    dividing learner c gives its beta to children 2c and 2c + 1; a saved model keeps them."""
    x, y = _blobs()
    model = _margin_model(k=4, lr=1e-2)
    assert model.margin_betas.numpy().tolist() == pytest.approx([1.2] * 5)
    model.divide()  # K = 2: learners 0 and 1
    model.train_on_batch(*_batch(x, y, learner=1))
    betas = model.margin_betas.numpy()
    assert abs(betas[1] - 1.2) == pytest.approx(1e-2, rel=1e-3)
    np.testing.assert_array_equal(np.delete(betas, 1), np.float32(1.2))
    model.divide()  # K = 4: learner 1's children are 2 and 3
    np.testing.assert_allclose(model.margin_betas.numpy(), [1.2, 1.2, betas[1], betas[1], 1.2])
    model.conquer()
    model.train_on_batch(*_batch(x, y, learner=2))
    conquered = model.margin_betas.numpy()
    assert abs(conquered[4] - 1.2) > 1e-3
    np.testing.assert_allclose(conquered[:4], [1.2, 1.2, betas[1], betas[1]], rtol=1e-7)
    path = str(tmp_path / "beta.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.margin_betas.numpy(), conquered)
    assert loaded.learner_loss.learn_beta and loaded.beta_optimizer is not None
    uncompiled = keras.saving.load_model(path, compile=False)  # as `evaluate` and export load
    np.testing.assert_array_equal(uncompiled.margin_betas.numpy(), conquered)


def test_frozen_backbone_keeps_its_weights_while_the_embedding_trains():
    """TPAMI's backbone lr 0: the backbone's weights stay (its Adam moments still move, as
    PyTorch's Adam at lr 0), the embedding layer steps; unfrozen, the backbone steps again."""
    x, y = _blobs()
    model = _model(d=8, k=1)
    backbone = model.backbone_variables()
    head = model.encoder.get_layer("embedding").kernel
    assert backbone and all(v is not head for v in backbone)
    model.train_on_batch(*_batch(x, y, learner=0))  # builds the optimizer's moments
    model.freeze_backbone(True)
    assert model.backbone_frozen
    weights = [v.numpy().copy() for v in backbone]
    head_before = head.numpy().copy()
    moments = [v.numpy().copy() for v in model.optimizer.variables if v.shape == backbone[0].shape]
    model.train_on_batch(*_batch(x, y, learner=0))
    for v, w in zip(backbone, weights):
        np.testing.assert_array_equal(v.numpy(), w)
    assert np.abs(head.numpy() - head_before).max() > 0
    moved = [v.numpy() for v in model.optimizer.variables if v.shape == backbone[0].shape]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(moved, moments))
    model.freeze_backbone(False)
    model.train_on_batch(*_batch(x, y, learner=0))
    assert np.abs(backbone[0].numpy() - weights[0]).max() > 0


def test_schedule_freezes_the_backbone_on_the_epochs_that_recluster():
    """Every T-th epoch (TPAMI: every even one), as the schedule re-clusters, and not in CVPR's
    conquer phase, where re-clustering stops; one learner freezes the same epochs."""
    x, y = _blobs()
    for k, mode, expected in ((2, "cvpr", [1, 0, 1, 0, 0, 0]), (2, "tpami", [1, 0, 1, 0, 1, 0]),
                              (1, "cvpr", [1, 0, 1, 0, 1, 0])):
        model = _model(d=8, k=k)
        sampler = ClusterBatchSampler(y, classes_per_batch=4, samples_per_class=4, seed=0)
        conquer = 4 if k > 1 else None  # one learner has no conquer phase (TrainConfig)
        callback = DnCScheduleCallback(sampler, x, period=2, conquer_epoch=conquer,
                                       conquer_mode=mode,
                                       freeze_backbone_on_recluster=True, verbose=0)
        seen = []
        probe = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: seen.append(int(model.backbone_frozen)))
        model.fit(sampler.as_dataset(x), epochs=6, steps_per_epoch=2, verbose=0,
                  callbacks=[callback, probe])
        assert seen == expected, (k, mode)
        if k > 1:  # the frozen epochs are those the schedule re-clusters, before CVPR's conquer
            clustering = [int(any(a.kind != "conquer" for a in callback.schedule.at(epoch)))
                          for epoch in range(6)]
            assert clustering[:4] == expected[:4]


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


def nn_hit(y_true, y_pred):
    """Per item: 1 if its nearest other item in the batch has its label (in-batch recall@1)."""
    import tensorflow as tf

    sim = tf.matmul(y_pred, y_pred, transpose_b=True) - 3.0 * tf.eye(tf.shape(y_pred)[0])
    nearest = tf.gather(y_true, tf.argmax(sim, axis=1))
    return tf.cast(tf.equal(nearest, y_true), tf.float32)


class PositiveDistance(keras.metrics.Metric):
    """Mean distance between same-label pairs, over every batch of the epoch."""

    def __init__(self, name="positive_distance", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        import tensorflow as tf

        same = tf.cast(tf.equal(y_true[:, None], y_true[None, :]), tf.float32)
        same -= tf.eye(tf.shape(y_true)[0])
        diff = y_pred[:, None, :] - y_pred[None, :, :]
        dist = tf.sqrt(tf.maximum(tf.reduce_sum(diff * diff, -1), 1e-12))
        self.total.assign_add(tf.reduce_sum(dist * same))
        self.count.assign_add(tf.reduce_sum(same))

    def result(self):
        return self.total / self.count


def _metric_reference(embedding, y, batch):
    """numpy: (mean nn_hit over all items, mean same-label distance) batch by batch; `batch`
    is a batch size (consecutive batches) or a list of index arrays."""
    if isinstance(batch, int):
        batch = [np.arange(s, min(s + batch, len(y))) for s in range(0, len(y), batch)]
    hits, total, count = [], 0.0, 0
    for indices in batch:
        e, labels = embedding[indices].astype(np.float64), y[indices]
        dist = np.linalg.norm(e[:, None] - e[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        hits += (labels[dist.argmin(1)] == labels).tolist()
        same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
        total, count = total + dist[same].sum(), count + same.sum()
    return np.mean(hits), total / count


def test_compiled_metrics_take_labels_and_embeddings_in_fit_and_evaluate():
    x, y = _blobs()
    # Learning rate 0: the embeddings fit's metrics see are predict's, so numpy can check them.
    model = _model(d=8, k=2, lr=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss=TripletHardLoss(margin=0.2),
                  metrics=[nn_hit, PositiveDistance()])
    history = model.fit(x, y, batch_size=32, shuffle=False, epochs=2, verbose=0,
                        validation_data=(x, y), validation_batch_size=64)
    hit, positive = _metric_reference(model.predict(x, verbose=0), y, 32)
    assert 0.0 < hit < 1.0  # an untrained model: the check can tell right from wrong values
    logs = history.history
    assert logs["nn_hit"] == pytest.approx([hit] * 2, rel=1e-5)
    assert logs["positive_distance"] == pytest.approx([positive] * 2, rel=1e-4)
    val_hit, val_positive = _metric_reference(model.predict(x, verbose=0), y, 64)
    assert logs["val_nn_hit"][-1] == pytest.approx(val_hit, rel=1e-5)
    assert logs["val_positive_distance"][-1] == pytest.approx(val_positive, rel=1e-4)
    assert {"loss", "overlap", "nonfinite"} <= set(logs)
    result = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert result["nn_hit"] == pytest.approx(val_hit, rel=1e-5)


_MIRRORED_METRICS = """
import json, sys
import keras, numpy as np, tensorflow as tf
sys.path.insert(0, {tests!r})
import test_model as t

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x, y = t._blobs()
with strategy.scope():
    model = t._model(d=8, k=2, lr=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss=t.TripletHardLoss(margin=0.2),
                  metrics=[t.nn_hit, t.PositiveDistance()])
history = model.fit(x, y, batch_size=32, shuffle=False, epochs=1, verbose=0)
found = {{"fit": {{"logs": {{k: v[-1] for k, v in history.history.items()}},
                  "reference": t._metric_reference(model.predict(x, verbose=0), y, 32)}}}}

from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.training.distributed import DistributedTrainer
with strategy.scope():
    model = t._model(d=8, k=2, lr=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss=t.TripletHardLoss(margin=0.2),
                  metrics=[t.nn_hit, t.PositiveDistance()])
sampler = ClusterBatchSampler(y, 4, 4, seed=0, steps_per_epoch=4)
history = DistributedTrainer(model, sampler, sampler.as_dataset(x)).fit(1, verbose=0)
batches = [indices for indices, _ in ClusterBatchSampler(y, 4, 4, seed=0,
                                                         steps_per_epoch=4).epoch_batches()]
found["trainer"] = {{"logs": {{k: v[-1] for k, v in history.history.items()}},
                    "reference": t._metric_reference(model.predict(x, verbose=0), y, batches)}}
print(json.dumps(found))
"""


def test_compiled_metrics_under_mirrored_strategy_see_the_global_batch():
    # Two replicas, each half of every batch: the metrics still see the whole (gathered) one.
    # A fresh process: the CPU splits into two logical devices only before TensorFlow starts.
    import json
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", _MIRRORED_METRICS.format(tests=tests)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    for loop in ("fit", "trainer"):  # model.fit, and DistributedTrainer's custom loop
        hit, positive = found[loop]["reference"]
        assert found[loop]["logs"]["nn_hit"] == pytest.approx(hit, rel=1e-5), loop
        assert found[loop]["logs"]["positive_distance"] == pytest.approx(positive, rel=1e-4)
