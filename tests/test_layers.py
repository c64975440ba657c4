import keras
import numpy as np
import pytest
import tensorflow as tf

from dnc_keras.layers import SubspaceMasks


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fixed_blocks_are_contiguous_and_normalised_on_their_own():
    layer = SubspaceMasks(8, max_learners=4, mode="fixed")
    z = np.arange(1.0, 17.0, dtype=np.float32).reshape(2, 8)
    for k in range(4):
        expected = np.zeros_like(z)
        expected[:, 2 * k:2 * k + 2] = _normalize(z[:, 2 * k:2 * k + 2])
        np.testing.assert_allclose(layer.learner_embedding(z, k).numpy(), expected, rtol=1e-6)
        assert int(layer.learner_dim(k)) == 2


def test_fixed_division_halves_the_parent_block():
    layer = SubspaceMasks(8, max_learners=4, mode="fixed", initial_learners=2)
    parent = layer.learner_masks().numpy()[:2]
    layer.divide()
    children = layer.learner_masks().numpy()[:4]
    for c in range(2):
        np.testing.assert_array_equal(children[2 * c] + children[2 * c + 1], parent[c])
    assert int(layer.learner_dim(0)) == 2


def test_learned_masks_relu_and_division_inherits_parent_mask():
    layer = SubspaceMasks(4, max_learners=4, mode="learned", initial_learners=2)
    layer.masks.assign(np.array([[1, -1, 2, 0], [0, 3, 0, 1], [9, 9, 9, 9], [9, 9, 9, 9]],
                                np.float32))
    z = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    expected = _normalize(np.array([[1.0, 0.0, 6.0, 0.0]]))
    np.testing.assert_allclose(layer.learner_embedding(z, 0).numpy(), expected, rtol=1e-6)
    layer.divide()
    masks = layer.masks.numpy()
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[2], masks[3])
    np.testing.assert_array_equal(masks[2], [0, 3, 0, 1])
    assert int(layer.active_learners.numpy()) == 4
    with pytest.raises(ValueError, match="exceeds max_learners"):
        layer.divide()


def test_overlap_penalty_is_mean_cosine_over_ordered_pairs_of_active_masks():
    layer = SubspaceMasks(3, max_learners=4, mode="learned", overlap_weight=0.5,
                          initial_learners=3)
    m = np.array([[1, 0, 0], [1, 1, 0], [0, -2, 1], [5, 5, 5]], np.float32)
    layer.masks.assign(m)
    r = np.maximum(m[:3], 0)
    cos = [r[i] @ r[j] / np.linalg.norm(r[i]) / np.linalg.norm(r[j])
           for i in range(3) for j in range(3) if i != j]
    np.testing.assert_allclose(float(layer.overlap_penalty()), 0.5 * np.mean(cos), rtol=1e-6)
    assert float(SubspaceMasks(4, 2, mode="fixed").overlap_penalty()) == 0.0
    one = SubspaceMasks(4, 2, mode="learned", initial_learners=1)
    assert float(one.overlap_penalty()) == 0.0


def test_inference_modes():
    z = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    full = SubspaceMasks(8, 4, mode="fixed")(z).numpy()
    np.testing.assert_allclose(full, _normalize(z), rtol=1e-5)
    masked = SubspaceMasks(8, 4, mode="fixed", inference="masked")(z).numpy()
    blocks = np.concatenate([_normalize(z[:, 2 * k:2 * k + 2]) for k in range(4)], 1) / 2.0
    np.testing.assert_allclose(masked, blocks, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(masked, axis=1), 1.0, rtol=1e-5)


def test_division_keeps_variables_and_traced_function():
    layer = SubspaceMasks(8, max_learners=4, mode="learned", initial_learners=1)
    n_vars = len(layer.weights)
    traces = []

    @tf.function
    def step(z, k):
        traces.append(1)
        return layer.learner_embedding(z, k) + layer.overlap_penalty()

    z = tf.ones((2, 8))
    step(z, tf.constant(0))
    layer.divide()
    layer.divide()
    step(z, tf.constant(3))
    assert len(traces) == 1 and len(layer.weights) == n_vars


def test_serialization_round_trip():
    layer = SubspaceMasks(16, max_learners=8, mode="learned", overlap_weight=0.02,
                          inference="masked", initial_learners=2)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.get_config() == layer.get_config()
    assert int(clone.active_learners.numpy()) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(embedding_dim=10, max_learners=4, mode="fixed"), "divisible"),
    (dict(embedding_dim=8, max_learners=2, initial_learners=4), "active learners"),
    (dict(embedding_dim=8, mode="blocks"), "mode must be"),
    (dict(embedding_dim=8, inference="concat"), "inference must be"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubspaceMasks(**kwargs)
