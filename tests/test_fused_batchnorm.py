import keras
import numpy as np
import pytest
import tensorflow as tf

from dnc_keras.backbones import FusedBatchNormalization, conv4


def _pair(shape=(6, 5, 4, 3), **kwargs):
    reference = keras.layers.BatchNormalization(**kwargs)
    fused = FusedBatchNormalization(**kwargs)
    reference.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(0)
    for layer in (reference, fused):
        layer.gamma.assign(rng.uniform(0.5, 2.0, 3).astype(np.float32))
        layer.beta.assign(rng.normal(size=3).astype(np.float32))
    fused.set_weights(reference.get_weights())
    return reference, fused


@pytest.mark.parametrize("renorm", [False, True], ids=["batchnorm", "renorm"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_matches_keras_outputs_gradients_and_moving_statistics(training, renorm):
    reference, fused = _pair(momentum=0.9, renorm=renorm, renorm_momentum=0.9)
    if renorm:  # renorm statistics away from the batch's, so that r and d matter
        for layer in (reference, fused):
            layer.renorm_mean.assign([1.0, 2.0, 4.0])
            layer.renorm_stddev.assign([1.5, 3.0, 0.5])
    x = tf.constant(3.0 + 2.0 * np.random.default_rng(1).normal(size=(6, 5, 4, 3)), tf.float32)
    results = []
    for layer in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    (y0, g0, m0, v0), (y1, g1, m1, v1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-6)
    if renorm:
        np.testing.assert_allclose(fused.renorm_mean, reference.renorm_mean, rtol=1e-5)
        np.testing.assert_allclose(fused.renorm_stddev, reference.renorm_stddev, rtol=1e-5)
    if training:
        assert not np.allclose(v1, 1.0)  # the statistics did move


def test_fused_falls_back_to_keras_for_other_inputs():
    reference, fused = _pair(shape=(4, 3))
    x = tf.random.normal((4, 3))  # 2-D: not the fused path
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-5)


def test_conv4_uses_the_fused_layer_and_round_trips(tmp_path):
    model = conv4((16, 16, 1))
    assert isinstance(model.get_layer("bn0"), FusedBatchNormalization)
    path = str(tmp_path / "conv4.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def _trained_conv4(normalization):
    """conv4 after a few SGD steps on batches drawn from two groups of different means and
    scales, as DnC draws one cluster per batch, so every moving statistic has moved."""
    keras.utils.set_random_seed(0)
    model = conv4((12, 12, 1), normalization=normalization)
    optimizer = keras.optimizers.SGD(0.05)
    rng = np.random.default_rng(0)
    for step in range(30):
        shift, scale = (0.2, 0.1) if step % 2 else (0.8, 0.4)
        x = tf.constant(shift + scale * rng.random((8, 12, 12, 1)), tf.float32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables),
                        model.trainable_variables)
    return model


def test_renorm_trains_on_the_features_inference_computes():
    """With batch renormalisation a training batch from one group is normalised by the moving
    statistics, as inference normalises it (what lets the train steps' features stand in for a
    full embedding pass); BatchNorm normalises it by the group's own statistics instead."""
    x = tf.constant(0.2 + 0.1 * np.random.default_rng(1).random((8, 12, 12, 1)), tf.float32)
    gaps = {}
    for normalization in ("batch", "renorm"):
        model = _trained_conv4(normalization)
        inference = model(x, training=False).numpy()
        training = model(x, training=True).numpy()  # before this call's statistics update
        gaps[normalization] = np.abs(training - inference).max() / np.abs(inference).max()
    assert gaps["renorm"] < 1e-4
    assert gaps["batch"] > 0.05


def test_conv4_renorm_round_trips_and_refuses_other_modes(tmp_path):
    model = _trained_conv4("renorm")
    assert isinstance(model.get_layer("bn0"), FusedBatchNormalization)
    assert model.get_layer("bn0").renorm
    path = str(tmp_path / "conv4.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).random((2, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="normalization must be one of"):
        conv4((12, 12, 1), normalization="group")
