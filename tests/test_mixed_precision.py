"""DnCModel under the "mixed_float16" policy (float16 compute, float32 variables and loss scaling),
on CPU, where Keras runs the float16 ops too: one step matches float32, an overflowing scaled
gradient is skipped without counting as divergence, real divergence still counts, and the saved
model loads and embeds in float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dnc_keras import model as model_module
from dnc_keras.backbones import build_encoder
from dnc_keras.callbacks import DivergenceGuard
from dnc_keras.layers import SubspaceMasks
from dnc_keras.losses import TripletHardLoss
from dnc_keras.model import DnCModel

# One SGD step of float16 compute against float32, same weights and batch: float16 keeps 11
# significant bits (relative rounding 2^-11 ~ 5e-4 per op), and the gradient sums 32 rows, so
# a few 1e-3 of relative error in the update; 2e-2 leaves room and still fails a gradient that
# was not unscaled (off by the loss scale, 2^10 here) or lost to underflow.
UPDATE_RTOL = 2e-2
LOSS_RTOL = 1e-2
SCALE = 2.0 ** 10


def _data(classes=8, per_class=4, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = rng.normal(size=(classes, dim))[y] + 0.6 * rng.normal(size=(len(y), dim))
    return x.reshape(len(y), dim, 1, 1).astype(np.float32), y


def _build(mode, optimizer, lr=0.1):
    backbone = keras.Sequential([keras.Input((12, 1, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu")])
    encoder = build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(8, 2, mode=mode), mask_lr_multiplier=1.0)
    model.compile(optimizer=optimizer(lr), loss=TripletHardLoss(margin=0.2))
    return model


def _batch(x, y, learner=1):
    return {"images": x, "learner": np.full(len(x), learner, np.int32)}, y


def _pair(mode, optimizer=keras.optimizers.SGD, scale=SCALE):
    """(float32 model, mixed_float16 model with the same weights and a LossScaleOptimizer)."""
    keras.utils.set_random_seed(0)
    reference = _build(mode, optimizer)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = _build(mode, lambda lr: keras.optimizers.LossScaleOptimizer(
            optimizer(lr), initial_scale=scale))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    mixed.set_weights(reference.get_weights())
    return reference, mixed


def _relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_one_step_matches_float32(mode):
    x, y = _data()
    reference, mixed = _pair(mode)
    assert mixed.encoder.get_layer("embedding").compute_dtype == "float16"
    assert mixed.subspaces.compute_dtype == "float32"
    before = [v.numpy().copy() for v in reference.trainable_variables]
    logs_ref = reference.train_on_batch(*_batch(x, y), return_dict=True)
    logs_mixed = mixed.train_on_batch(*_batch(x, y), return_dict=True)
    assert logs_mixed["nonfinite"] == 0.0
    assert logs_mixed["loss"] == pytest.approx(logs_ref["loss"], rel=LOSS_RTOL)
    assert logs_mixed["loss"] > 0.05  # a real step: the margin is not yet met
    if mode == "learned":
        assert logs_mixed["overlap"] == pytest.approx(logs_ref["overlap"], rel=1e-6)
        assert isinstance(mixed.mask_optimizer, keras.optimizers.LossScaleOptimizer)
    for v0, v_ref, v_mixed in zip(before, reference.trainable_variables,
                                  mixed.trainable_variables):
        assert v_mixed.dtype == "float32"
        step_ref, step_mixed = v_ref.numpy() - v0, v_mixed.numpy() - v0
        if np.abs(step_ref).max() == 0:  # the other learner's block under fixed masks
            assert np.abs(step_mixed).max() == 0
            continue
        assert _relative(step_mixed, step_ref) < UPDATE_RTOL, v_ref.path
    # The masks learned, and within the same tolerance (checked above).
    masks = mixed.subspaces.masks.numpy()
    assert (mode == "learned") == (np.abs(masks - 1.0).max() > 0)


def test_adam_steps_match_float32_with_the_masks():
    """Several Adam steps (the job's optimizer) of learned masks: the runs stay together."""
    x, y = _data()
    reference, mixed = _pair("learned", keras.optimizers.Adam)
    for step in range(3):
        reference.train_on_batch(*_batch(x, y, learner=step % 2))
        mixed.train_on_batch(*_batch(x, y, learner=step % 2))
    for v_ref, v_mixed in zip(reference.trainable_variables, mixed.trainable_variables):
        np.testing.assert_allclose(v_mixed.numpy(), v_ref.numpy(), atol=5e-3 * 0.1 * 3)


def test_overflowing_scaled_gradient_is_skipped_without_tripping_the_guard():
    x, y = _data()
    # A loss scale of 2^40 overflows float16 (largest 65504) in the encoder's backward pass.
    reference, mixed = _pair("learned", scale=2.0 ** 40)
    encoder_before = [v.numpy().copy() for v in mixed.encoder.trainable_variables]
    guard = DivergenceGuard(verbose=0)
    dataset = tf.data.Dataset.from_tensors(_batch(x, y))
    history = mixed.fit(dataset, epochs=1, callbacks=[guard], verbose=0, shuffle=False)
    assert guard.diverged_at is None
    assert history.history["nonfinite"] == [0.0]
    for v0, v in zip(encoder_before, mixed.encoder.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), v0)  # the encoder's step was skipped
    assert float(mixed.optimizer.dynamic_scale.numpy()) == 2.0 ** 39
    # The masks' gradients are float32 throughout (nothing of theirs overflows): their own
    # LossScaleOptimizer applies them, as float32 training would.
    assert float(mixed.mask_optimizer.dynamic_scale.numpy()) == 2.0 ** 40
    reference.train_on_batch(*_batch(x, y))
    np.testing.assert_allclose(mixed.subspaces.masks.numpy(), reference.subspaces.masks.numpy(),
                               atol=1e-3)
    # Once the scale is low enough, the same batch trains the encoder.
    mixed.optimizer.dynamic_scale.assign(SCALE)
    logs = mixed.train_on_batch(*_batch(x, y), return_dict=True)
    assert logs["nonfinite"] == 0.0
    assert any(np.abs(v.numpy() - v0).max() > 0
               for v0, v in zip(encoder_before, mixed.encoder.trainable_variables))


def test_non_finite_embeddings_still_trip_the_guard():
    x, y = _data()
    _, mixed = _pair("learned")
    x = x.copy()
    x[3] = np.nan
    guard = DivergenceGuard(verbose=0)
    history = mixed.fit(tf.data.Dataset.from_tensors(_batch(x, y)), epochs=1,
                        callbacks=[guard], verbose=0, shuffle=False)
    assert guard.diverged_at == (0, 0)
    assert history.history["nonfinite"] == [1.0]


def test_non_finite_gradient_counts_once_the_loss_scale_is_not_above_one():
    """The rule itself, on hand-made tensors: a non-finite gradient is an overflow to skip
    only while the loss scale is above 1."""
    variable = keras.Variable(np.zeros(3, np.float32))
    z, total = tf.ones((2, 3)), tf.constant(0.5)
    bad = [tf.constant([1.0, np.inf, 0.0])]
    for scale, finite in ((2.0 ** 15, True), (2.0, True), (1.0, False), (0.5, False)):
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(),
                                                        initial_scale=scale)
        assert bool(model_module._step_finite(z, total, bad, [(optimizer, [variable])])) \
            == finite, scale
    plain = keras.optimizers.SGD()
    assert not bool(model_module._step_finite(z, total, bad, [(plain, [variable])]))
    assert not bool(model_module._step_finite(z, tf.constant(np.nan), [tf.ones(3)],
                                              [(optimizer, [variable])]))


def test_saved_model_loads_and_embeds_in_float32(tmp_path):
    x, y = _data()
    reference, mixed = _pair("learned")
    mixed.train_on_batch(*_batch(x, y))
    reference.set_weights(mixed.get_weights())
    embeddings = mixed.predict(x, verbose=0)
    path = str(tmp_path / "mixed.keras")
    mixed.save(path)
    assert keras.mixed_precision.global_policy().name == "float32"
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    out = loaded.predict(x, verbose=0)
    assert out.dtype == np.float32 and loaded.embed(x).dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, embeddings, atol=1e-6)
    # float16 compute against float32 compute of the same weights.
    np.testing.assert_allclose(out, reference.predict(x, verbose=0), atol=5e-3)
    logs = loaded.train_on_batch(*_batch(x, y), return_dict=True)  # and trains on
    assert logs["nonfinite"] == 0.0


def test_the_job_builds_conv4_in_mixed_precision_and_restores_the_policy():
    """`--mixed-precision` reaches the config; build_model makes float16 layers and loss-scaling
    optimizers, leaves the global policy as it was, and the Conv-4 trains a step on CPU."""
    from dnc_keras.training.config import TrainConfig
    from dnc_keras.training.job import build_model
    from dnc_keras_cli import build_parser

    args = build_parser().parse_args(["train", "--mixed-precision"])
    assert args.mixed_precision is True
    assert not build_parser().parse_args(["train"]).mixed_precision
    config = TrainConfig(learners=2, subspaces="learned", mixed_precision=True)
    model = build_model(config, (28, 28, 1))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.encoder.get_layer("embedding").compute_dtype == "float16"
    assert model.subspaces.compute_dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.mask_optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    images = rng.random((16, 28, 28, 1), dtype=np.float32)
    labels = np.repeat(np.arange(4), 4)
    logs = model.train_on_batch(*_batch(images, labels, learner=0), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["nonfinite"] == 0.0
    assert model.predict(images, verbose=0).dtype == np.float32
    plain = build_model(TrainConfig(learners=2), (28, 28, 1))
    assert plain.encoder.get_layer("embedding").compute_dtype == "float32"
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)
