import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dnc_keras.mining import DistanceWeightedSampler
from dnc_keras.mining import distance_weighted_log_probs
from dnc_keras.mining import distance_weighted_sampling
from dnc_keras.mining import effective_dimension


def _dist(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))


def _unit(rng, b, d):
    x = rng.normal(size=(b, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _log_probs_oracle(x, labels, n, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Row by row, from the formula of Wu et al. (2017) and method.md section 4."""
    d = _dist(x)
    b = len(labels)
    out = np.full((b, b), -np.inf)
    for a in range(b):
        negs = [j for j in range(b) if labels[j] != labels[a]]
        near = [j for j in negs if d[a, j] < nonzero_loss_cutoff]
        if near:
            dc = np.maximum(d[a, near], cutoff)
            lw = (2 - n) * np.log(dc) - (n - 3) / 2 * np.log(1 - dc**2 / 4)
            out[a, near] = lw - np.logaddexp.reduce(lw)
        elif negs:
            out[a, negs] = -np.log(len(negs))
    return out


def _points_at(distances_from_first, extra_dim=0):
    """Unit vectors in 2-D (padded) whose chord distances to the first point are as given."""
    angles = [0.0] + [2 * np.arcsin(dd / 2) for dd in distances_from_first]
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.pad(x, [(0, 0), (0, extra_dim)]).astype(np.float32)


def _draws(x, labels, num, **kwargs):
    """`num` independent samples (stateless seeds [i, 7]), negative_idx stacked as [num, T]."""
    x = tf.constant(x)
    labels = tf.constant(labels)

    @tf.function
    def run(seeds):
        return tf.map_fn(
            lambda s: distance_weighted_sampling(x, labels, seed=s, **kwargs)[2],
            seeds,
            fn_output_signature=tf.int32,
            parallel_iterations=64,
        )

    seeds = tf.stack([tf.range(num), tf.fill([num], 7)], axis=1)
    return run(seeds).numpy()


def _chi2_pvalue(counts, probs):
    probs = np.asarray(probs, np.float64)
    expected = probs / probs.sum() * counts.sum()
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dimension", [None, 3, 16])
def test_log_probs_match_oracle(seed, dimension):
    rng = np.random.default_rng(seed)
    x = _unit(rng, 12, 4)
    labels = rng.integers(0, 4, size=12)
    n = 4 if dimension is None else dimension
    got = distance_weighted_log_probs(x, labels, dimension=dimension).numpy()
    want = _log_probs_oracle(x, labels, n)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-4, atol=1e-4)


def test_effective_dimension_of_zero_padded_block():
    rng = np.random.default_rng(0)
    block = _unit(rng, 10, 8)
    padded = np.zeros((10, 32), np.float32)
    padded[:, 8:16] = block
    assert float(effective_dimension(padded)) == 8.0
    labels = np.arange(10) // 2
    np.testing.assert_allclose(
        distance_weighted_log_probs(padded, labels).numpy(),
        distance_weighted_log_probs(block, labels, dimension=8).numpy(),
        rtol=1e-5,
    )


@pytest.mark.parametrize("seed", range(6))
def test_triplets_are_valid_and_cover_every_positive_pair_once(seed):
    rng = np.random.default_rng(seed)
    b = 16
    x = _unit(rng, b, 8)
    labels = rng.integers(0, 5, size=b)
    labels[0] = 99  # a class with one image: an anchor without positives
    a, p, n, valid = (t.numpy() for t in distance_weighted_sampling(x, labels, seed=seed))
    assert a.shape == p.shape == n.shape == valid.shape == (b * (b - 1),)
    a, p, n = a[valid], p[valid], n[valid]
    assert np.all(a != p)
    assert np.all(labels[a] == labels[p])
    assert np.all(labels[a] != labels[n])
    pairs = sorted(zip(a.tolist(), p.tolist()))
    expected = sorted(
        (i, j) for i in range(b) for j in range(b) if i != j and labels[i] == labels[j]
    )
    assert pairs == expected
    d = _dist(x)
    for anchor in np.unique(a):
        drawn = n[a == anchor]
        negs = np.flatnonzero(labels != labels[anchor])
        near = negs[d[anchor, negs] < 1.4]
        if len(near):
            assert np.all(d[anchor, drawn] < 1.4)
        # Without replacement while enough negatives can be drawn.
        pool = len(near) if len(near) else len(negs)
        assert len(np.unique(drawn)) == min(len(drawn), pool)


def test_anchors_without_positives_or_negatives_give_nothing():
    x = _unit(np.random.default_rng(0), 4, 3)
    *_, valid = distance_weighted_sampling(x, [0, 1, 2, 3], seed=0)
    assert not valid.numpy().any()
    *_, valid = distance_weighted_sampling(x, [5, 5, 5, 5], seed=0)
    assert not valid.numpy().any()
    a, p, n, valid = distance_weighted_sampling(x[:1], [0], seed=0)
    assert valid.shape == (0,)


def test_padding_slots_point_at_the_anchor():
    x = _unit(np.random.default_rng(0), 6, 3)
    a, p, n, valid = (t.numpy() for t in distance_weighted_sampling(x, [0, 0, 1, 2, 3, 4], seed=0))
    assert np.all(p[~valid] == a[~valid]) and np.all(n[~valid] == a[~valid])


def test_fewer_drawable_negatives_than_positives_reuses_draws():
    # Anchor 0 has 3 positives but a single negative within 1.4.
    x = _points_at([0.1, 0.2, 0.3, 0.8, 1.9, 1.95])
    labels = [0, 0, 0, 0, 1, 2, 3]
    a, p, n, valid = (t.numpy() for t in distance_weighted_sampling(x, labels, seed=3))
    first = valid & (a == 0)
    assert first.sum() == 3
    assert np.all(n[first] == 4)


def test_never_picks_beyond_cutoff_when_a_nearer_negative_exists():
    x = _points_at([0.2, 1.0, 1.2, 1.45, 1.6, 1.9])
    labels = [0, 0, 1, 2, 3, 4, 5]
    draws = _draws(x, labels, 500, dimension=4)[:, 0]
    assert set(np.unique(draws)) <= {2, 3}


@pytest.mark.parametrize("dimension", [3, 8])
def test_empirical_frequencies_match_weights(dimension):
    x = _points_at([0.3, 0.55, 0.8, 1.0, 1.2, 1.35, 1.5])
    labels = [0, 0, 1, 2, 3, 4, 5, 6]
    probs = np.exp(distance_weighted_log_probs(x, labels, dimension=dimension).numpy()[0])
    draws = _draws(x, labels, 4000, dimension=dimension)[:, 0]
    counts = np.bincount(draws, minlength=8)
    assert counts[:2].sum() == 0 and counts[7] == 0  # self, positive, beyond 1.4
    support = np.arange(2, 7)
    assert _chi2_pvalue(counts[support], probs[support] / probs[support].sum()) > 1e-3


def test_first_draw_with_several_positives_follows_weights():
    x = _points_at([0.1, 0.2, 0.6, 0.9, 1.1, 1.3])
    labels = [0, 0, 0, 1, 2, 3, 4]
    probs = np.exp(distance_weighted_log_probs(x, labels, dimension=4).numpy()[0])
    draws = _draws(x, labels, 3000, dimension=4)
    counts = np.bincount(draws[:, 0], minlength=7)[3:]
    assert _chi2_pvalue(counts, probs[3:]) > 1e-3
    # The two slots of anchor 0 are drawn without replacement.
    assert np.all(draws[:, 0] != draws[:, 1])


def test_uniform_fallback_when_every_negative_is_beyond_cutoff():
    # Orthonormal vectors: every distance is sqrt(2) > 1.4, the usual state early in training.
    x = np.eye(6, dtype=np.float32)
    labels = [0, 0, 1, 2, 3, 4]
    lp = distance_weighted_log_probs(x, labels).numpy()
    np.testing.assert_allclose(np.exp(lp[0]), [0, 0, 0.25, 0.25, 0.25, 0.25], atol=1e-6)
    draws = _draws(x, labels, 2000)[:, 0]
    counts = np.bincount(draws, minlength=6)
    assert counts[:2].sum() == 0
    assert _chi2_pvalue(counts[2:], np.full(4, 0.25)) > 1e-3


def test_high_dimension_degenerates_to_hardest_negative():
    x = _points_at([0.3, 0.8, 0.9, 1.0, 1.2])
    labels = [0, 0, 1, 2, 3, 4]
    probs = np.exp(distance_weighted_log_probs(x, labels, dimension=128).numpy()[0])
    assert probs[2] > 0.9999
    draws = _draws(x, labels, 500, dimension=128)[:, 0]
    assert np.mean(draws == 2) > 0.99
    # In low dimension the same row is spread out.
    low = _draws(x, labels, 500, dimension=2)[:, 0]
    assert np.mean(low == 2) < 0.6


def test_deterministic_for_a_seed():
    x = _unit(np.random.default_rng(0), 16, 8)
    labels = np.arange(16) // 4
    run = lambda seed: distance_weighted_sampling(x, labels, seed=seed)[2].numpy()  # noqa: E731
    assert np.array_equal(run(5), run(5))
    assert np.array_equal(run(tf.constant([5, 1])), run(tf.constant([5, 1])))
    assert not np.array_equal(run(tf.constant([5, 1])), run(tf.constant([6, 1])))
    first = DistanceWeightedSampler(seed=11)
    second = DistanceWeightedSampler(seed=11)
    seq1 = [first(x, labels)[2].numpy() for _ in range(3)]
    seq2 = [second(x, labels)[2].numpy() for _ in range(3)]
    for s1, s2 in zip(seq1, seq2):
        assert np.array_equal(s1, s2)
    assert not np.array_equal(seq1[0], seq1[1])  # the generator advances between calls


def test_works_in_tf_function_with_dynamic_batch():
    sampler = DistanceWeightedSampler(seed=0)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None], tf.int32)]
    )
    def run(x, labels):
        return sampler(x, labels)

    rng = np.random.default_rng(1)
    for b in (4, 9):
        x = _unit(rng, b, 8)
        labels = np.arange(b, dtype=np.int32) // 2
        a, p, n, valid = (t.numpy() for t in run(x, labels))
        assert a.shape == (b * (b - 1),)
        assert np.all(labels[a[valid]] != labels[n[valid]])
    assert run.experimental_get_tracing_count() == 1


def test_static_shape_inside_tf_function():
    @tf.function
    def run(x, labels):
        out = distance_weighted_sampling(x, labels, seed=tf.constant([1, 2]))
        assert all(t.shape == (20 * 19,) for t in out)
        return out

    run(tf.math.l2_normalize(tf.ones([20, 4]), axis=1), tf.range(20) // 4)


def test_config_round_trip():
    sampler = DistanceWeightedSampler(cutoff=0.4, nonzero_loss_cutoff=1.3, dimension=16, seed=2)
    clone = DistanceWeightedSampler.from_config(sampler.get_config())
    assert clone.get_config() == sampler.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sampler))
    assert isinstance(restored, DistanceWeightedSampler)
    assert restored.get_config() == sampler.get_config()
    x = _unit(np.random.default_rng(0), 8, 16)
    assert np.array_equal(sampler(x, np.arange(8) // 2)[2], restored(x, np.arange(8) // 2)[2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cutoff": 0.0}, "cutoff must be > 0"),
        ({"cutoff": 1.5}, "nonzero_loss_cutoff must be greater"),
        ({"dimension": 0}, "dimension must be None or an integer"),
        ({"dimension": 2.5}, "dimension must be None or an integer"),
        ({"seed": "a"}, "seed must be None or an int"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistanceWeightedSampler(**kwargs)
