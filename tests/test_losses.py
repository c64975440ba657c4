import keras
import numpy as np
import pytest
import tensorflow as tf

from dnc_keras.losses import ContrastiveLoss
from dnc_keras.losses import MarginLoss
from dnc_keras.losses import TripletHardLoss
from dnc_keras.losses import TripletSemiHardLoss
from dnc_keras.mining import DistanceWeightedSampler

# ---------------------------------------------------------------- brute-force numpy oracles


def _dist(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def semihard_oracle(labels, x, margin=1.0):
    d, b = _dist(x), len(labels)
    terms = []
    for a in range(b):
        negs = [n for n in range(b) if labels[n] != labels[a]]
        for p in range(b):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d[a, n] for n in negs if d[a, n] > d[a, p]]
            if farther:
                d_an = min(farther)
            elif negs:
                d_an = max(d[a, n] for n in negs)
            else:
                d_an = 0.0  # tensorflow-addons: masked maximum of an empty row
            terms.append(max(margin + d[a, p] - d_an, 0.0))
    return float(np.mean(terms)) if terms else 0.0


def hard_oracle(labels, x, margin=1.0, soft=False):
    d, b = _dist(x), len(labels)
    terms = []
    for a in range(b):
        pos = [d[a, p] for p in range(b) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(b) if labels[n] != labels[a]]
        hp = max(pos) if pos else 0.0
        hn = min(neg) if neg else max(d[a])
        terms.append(np.log1p(np.exp(hp - hn)) if soft else max(hp - hn + margin, 0.0))
    return float(np.mean(terms))


def contrastive_oracle(labels, x, margin=1.0):
    d, b = _dist(x), len(labels)
    terms = []
    for i in range(b):
        for j in range(i + 1, b):
            if labels[i] == labels[j]:
                terms.append(d[i, j] ** 2)
            else:
                terms.append(max(margin - d[i, j], 0.0) ** 2)
    return float(np.mean(terms)) if terms else 0.0


def margin_oracle(x, triplets, alpha=0.2, beta=1.2, nu=0.0):
    d = _dist(x)
    terms = []
    for a, p, n in triplets:
        terms.append(max(0.0, d[a, p] - beta + alpha))
        terms.append(max(0.0, beta - d[a, n] + alpha))
    nonzero = [t for t in terms if t > 0]
    return (sum(nonzero) + nu * abs(beta)) / len(nonzero) if nonzero else 0.0


# ---------------------------------------------------------------- helpers

DTYPES = ["float16", "float32", "float64"]
TOL = {"float16": 2e-3, "float32": 1e-4, "float64": 1e-4}


def _batch(seed, dtype, b=16, d=8, classes=5, normalise=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d))
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(dtype)
    labels = rng.integers(0, classes, size=b)
    labels[0] = 1000  # always one single-image class
    return labels, x


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def _value_and_grad(loss, labels, x):
    xv = tf.Variable(np.asarray(x, np.float32))
    with tf.GradientTape() as tape:
        value = loss(labels, xv)
    return value.numpy(), tape.gradient(value, xv).numpy()


ALL_LOSSES = [
    lambda: MarginLoss(seed=0),
    lambda: TripletSemiHardLoss(),
    lambda: TripletHardLoss(),
    lambda: TripletHardLoss(soft=True),
    lambda: ContrastiveLoss(),
]
LOSS_IDS = ["margin", "semihard", "hard", "soft_hard", "contrastive"]


# ---------------------------------------------------------------- against the oracles


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_semihard_matches_oracle(seed, dtype, margin):
    labels, x = _batch(seed, dtype, normalise=seed % 2 == 0)
    got = TripletSemiHardLoss(margin=margin)(labels, x)
    assert got.dtype == tf.float32
    _close(got, semihard_oracle(labels, x, margin), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("soft", [False, True])
def test_hard_matches_oracle(seed, dtype, soft):
    labels, x = _batch(seed, dtype, normalise=seed % 2 == 0)
    got = TripletHardLoss(margin=0.5, soft=soft)(labels, x)
    _close(got, hard_oracle(labels, x, 0.5, soft), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.5, 1.5])
def test_contrastive_matches_oracle(seed, dtype, margin):
    labels, x = _batch(seed, dtype)
    got = ContrastiveLoss(margin=margin)(labels, x)
    _close(got, contrastive_oracle(labels, x, margin), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nu", [0.0, 0.1])
def test_margin_matches_oracle_on_sampled_triplets(seed, dtype, nu):
    labels, x = _batch(seed, dtype, d=4, classes=4)
    a, p, n, valid = DistanceWeightedSampler(seed=seed)(x, labels)
    triplets = list(zip(a.numpy()[valid], p.numpy()[valid], n.numpy()[valid]))
    assert triplets
    got = MarginLoss(seed=seed, nu=nu)(labels, x)
    _close(got, margin_oracle(x, triplets, nu=nu), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_margin_with_a_given_beta_matches_oracle_and_its_gradient(seed):
    """The learned beta a DnCModel passes (`beta=`) replaces the fixed one; its gradient is
    (number of non-zero negative terms - positive ones + nu * sign(beta)) / non-zero terms."""
    labels, x = _batch(seed, "float32", d=4, classes=4)
    a, p, n, valid = DistanceWeightedSampler(seed=seed)(x, labels)
    triplets = list(zip(a.numpy()[valid], p.numpy()[valid], n.numpy()[valid]))
    beta = tf.Variable(0.9)
    with tf.GradientTape() as tape:
        got = MarginLoss(seed=seed, nu=0.1, learn_beta=True)(labels, x, beta=beta)
    _close(got, margin_oracle(x, triplets, beta=0.9, nu=0.1), "float32")
    d = _dist(x)
    pos = sum(d[i, j] - 0.9 + 0.2 > 0 for i, j, _ in triplets)
    neg = sum(0.9 - d[i, k] + 0.2 > 0 for i, _, k in triplets)
    np.testing.assert_allclose(tape.gradient(got, beta), (neg - pos + 0.1) / (pos + neg),
                               rtol=1e-5)
    assert MarginLoss.from_config(MarginLoss(learn_beta=True).get_config()).learn_beta


# ---------------------------------------------------------------- hand-computed cases

LINE = np.array([[0.0], [1.0], [3.0]])  # d01 = 1, d02 = 3, d12 = 2


def test_semihard_by_hand():
    # (0,1): negative 2 at 3 > 1 -> 2 + 1 - 3 = 0; (1,0): 2 at 2 > 1 -> 2 + 1 - 2 = 1.
    np.testing.assert_allclose(TripletSemiHardLoss(margin=2.0)([0, 0, 1], LINE), 0.5, atol=1e-6)
    # No negative farther than the positive: the farthest negative is used (1 + 2 - 1 = 2).
    x = np.array([[0.0], [2.0], [1.0]])
    np.testing.assert_allclose(TripletSemiHardLoss()([0, 0, 1], x), 2.0, atol=1e-6)


def test_hard_by_hand():
    # hp = (1, 1, 0), hn = (3, 2, 2): hinge terms with margin 2 are (0, 1, 0).
    np.testing.assert_allclose(TripletHardLoss(margin=2.0)([0, 0, 1], LINE), 1 / 3, atol=1e-6)
    soft = np.mean(np.log1p(np.exp([-2.0, -1.0, -2.0])))
    np.testing.assert_allclose(TripletHardLoss(soft=True)([0, 0, 1], LINE), soft, atol=1e-6)


def test_contrastive_by_hand():
    # (0,1) positive: 1; (0,2) negative at 3: 0; (1,2) negative at 2: 0.5^2.
    np.testing.assert_allclose(ContrastiveLoss(margin=2.5)([0, 0, 1], LINE), 1.25 / 3, atol=1e-6)


def test_margin_by_hand():
    # Triplets (0,1,2) and (1,0,2); d01 = d12 = sqrt(2), d02 = 2. Every negative is beyond
    # 1.4, so the sampler falls back to the only negative. l+ = sqrt(2) - 1 twice, l- = 0.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(MarginLoss(seed=0)([0, 0, 1], x), np.sqrt(2) - 1, atol=1e-6)
    # Everything satisfied: positives close, negative far -> no non-zero term -> 0.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert float(MarginLoss(seed=0)([0, 0, 1], x)) == 0.0


# ---------------------------------------------------------------- degenerate batches

DEGENERATE = {
    "duplicates": ([0, 0, 1, 1, 2], np.tile([[0.6, 0.8, 0.0]], (5, 1))),
    "duplicates_across_classes": ([0, 1, 0, 1], np.repeat(np.eye(2, 3), 2, axis=0)),
    "single_image_classes": ([0, 1, 2, 3], np.eye(4, 3)),
    "one_class": ([7, 7, 7, 7], np.eye(4, 3)),
    "single_item": ([0], np.array([[1.0, 0.0, 0.0]])),
    "zeros": ([0, 0, 1, 1], np.zeros((4, 3))),
    "pair_of_duplicates_no_negative": ([3, 3], np.ones((2, 3)) / np.sqrt(3)),
}


@pytest.mark.parametrize("case", list(DEGENERATE), ids=list(DEGENERATE))
@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_degenerate_batches_are_finite(make_loss, case):
    labels, x = DEGENERATE[case]
    value, grad = _value_and_grad(make_loss(), labels, x)
    assert np.isfinite(value), value
    assert np.all(np.isfinite(grad)), grad


@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_no_positive_pair_follows_each_losss_definition(make_loss):
    """Four classes of one image each, close enough that negatives cost something: the
    triplet losses that need a positive pair give exactly 0 (tensorflow-addons' semi-hard loss
    gives NaN here); batch-hard (hardest positive 0, as in tensorflow-addons) and contrastive
    (negative pairs only) give their oracles' non-zero values."""
    labels = [0, 1, 2, 3]
    x = np.array([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.8, 0.0, 0.6], [0.95, 0.2, 0.2]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    loss = make_loss()
    value = float(loss(labels, x))
    if isinstance(loss, (MarginLoss, TripletSemiHardLoss)):
        assert value == 0.0
    elif isinstance(loss, TripletHardLoss):
        expected = hard_oracle(labels, x, soft=loss.soft)
        assert expected > 0.1 and value == pytest.approx(expected, abs=1e-5)
    else:
        expected = contrastive_oracle(labels, x)
        assert expected > 0.1 and value == pytest.approx(expected, abs=1e-5)


def test_degenerate_values_follow_tfa():
    # One class only: no negative, tfa uses d_an = 0 (semi-hard) and hn = row max (hard).
    labels, x = DEGENERATE["one_class"]
    semihard = TripletSemiHardLoss()(labels, x)
    np.testing.assert_allclose(semihard, semihard_oracle(labels, x), atol=1e-6)
    np.testing.assert_allclose(TripletHardLoss()(labels, x), 1.0, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_a_non_finite_embedding_gives_nan_not_a_finite_loss(make_loss, bad):
    """The masks and maxima inside the losses used to turn NaN distances into 1.0 (triplet)
    or 1.4 (margin), which hid a diverged network from every guard watching the loss."""
    labels, x = _batch(0, "float32", d=4)
    x = np.array(x)
    x[3, 1] = bad
    assert np.isnan(float(make_loss()(labels, x)))


@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_gradients_are_finite_and_nonzero_on_random_batch(make_loss):
    labels, x = _batch(0, "float32", d=4)
    value, grad = _value_and_grad(make_loss(), labels, x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.abs(grad).sum() > 0


# ---------------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_low_precision_inputs(make_loss, dtype):
    labels, x = _batch(1, "float32")
    low = tf.cast(x, dtype)
    want = make_loss()(labels, tf.cast(low, tf.float32))
    got = make_loss()(labels, low)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make_loss", ALL_LOSSES, ids=LOSS_IDS)
def test_label_shapes_and_dtypes(make_loss):
    labels, x = _batch(2, "float32")
    base = float(make_loss()(labels, x))
    for variant in (labels[:, None], labels.astype(np.int64), labels.astype(np.float32)):
        np.testing.assert_allclose(float(make_loss()(variant, x)), base, rtol=1e-6)


def test_large_label_ids_survive_float16_dtype():
    # Keras' Loss.__call__ would cast labels to the loss dtype; 4097 and 4098 collide in float16.
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert float(ContrastiveLoss(dtype="float16")([4097, 4098], x)) == 0.0


def test_mismatched_lengths_and_sample_weight():
    with pytest.raises(ValueError, match="one label per embedding"):
        TripletHardLoss()([0, 1, 2], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="takes no sample_weight"):
        TripletHardLoss()([0, 1], np.zeros((2, 2)), sample_weight=[1.0, 1.0])


# ---------------------------------------------------------------- serialisation and Keras


@pytest.mark.parametrize(
    "loss",
    [
        MarginLoss(
            alpha=0.1, beta=1.0, nu=0.01, cutoff=0.4, nonzero_loss_cutoff=1.1, dimension=32, seed=3
        ),
        TripletSemiHardLoss(margin=0.3),
        TripletHardLoss(margin=0.4, soft=True),
        ContrastiveLoss(margin=0.7, name="my_contrastive"),
    ],
    ids=["margin", "semihard", "hard", "contrastive"],
)
def test_serialization_round_trip(loss):
    clone = loss.__class__.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    labels, x = _batch(5, "float32")
    # Fresh objects: the seeded margin loss draws the same first triplets too.
    np.testing.assert_allclose(
        loss.__class__.from_config(loss.get_config())(labels, x), restored(labels, x), rtol=1e-6
    )
    from_get = keras.losses.get(keras.saving.serialize_keras_object(loss))
    assert from_get.get_config() == loss.get_config()


@pytest.mark.parametrize("make_loss", [ALL_LOSSES[0], ALL_LOSSES[1]], ids=LOSS_IDS[:2])
def test_compiles_and_fits(make_loss):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = np.repeat(np.arange(16), 4)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), keras.layers.UnitNormalization()]
    )
    model.compile(optimizer="sgd", loss=make_loss())
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_margin_loss_inside_tf_function_draws_fresh_triplets():
    loss = MarginLoss(seed=0, dimension=4)
    labels, x = _batch(3, "float32", d=4, classes=3)
    step = tf.function(lambda y, e: loss(y, e))
    values = {float(step(labels, x)) for _ in range(8)}
    assert len(values) > 1
    assert step.experimental_get_tracing_count() == 1
