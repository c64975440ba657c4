"""Open-set search: thresholds and figures worked out by hand, then calibration on synthetic
embeddings where the right answer is known, tested on classes disjoint from calibration's."""

import math

import numpy as np
import pytest

from dnc_keras.export import open_set
from dnc_keras.export.index import EmbeddingIndex

# Five queries, nearest distance ascending; the 3rd and 5th nearest items have the wrong
# class; the 5th query's class is not in the gallery (so any answer to it is wrong).
DISTANCES = [0.1, 0.2, 0.3, 0.4, 0.5]
CORRECT = [True, True, False, True, False]
KNOWN = [True, True, True, True, False]


@pytest.mark.parametrize("target, threshold, precision, recall", [
    # Precision when accepting up to: 0.1 -> 1/1, 0.2 -> 2/2, 0.3 -> 2/3, 0.4 -> 3/4,
    # 0.5 -> 3/5. Only 0.1, 0.2 and 0.4 add a correct answer; the threshold goes halfway to
    # the next distance.
    (1.0, 0.25, 1.0, 2 / 4),
    (0.8, 0.25, 1.0, 2 / 4),
    (0.75, 0.45, 0.75, 3 / 4),
    (0.6, 0.45, 0.75, 3 / 4),  # accepting the 5th query too would add no recall
])
def test_choose_threshold_by_hand(target, threshold, precision, recall):
    chosen, figures = open_set.choose_threshold(DISTANCES, CORRECT, KNOWN, target)
    assert chosen == pytest.approx(threshold)
    assert figures["precision"] == pytest.approx(precision)
    assert figures["recall"] == pytest.approx(recall)


def test_metrics_at_by_hand():
    figures = open_set.metrics_at(0.35, DISTANCES, CORRECT, KNOWN)
    assert figures == {"threshold": 0.35, "queries": 5, "known_queries": 4,
                       "unknown_queries": 1, "accepted": 3, "correct_accepted": 2,
                       "precision": 2 / 3, "recall": 2 / 4, "unknown_rejection_rate": 1.0,
                       "accuracy": 3 / 5}
    nothing = open_set.metrics_at(0.05, DISTANCES, CORRECT, KNOWN)
    assert nothing["precision"] is None and nothing["recall"] == 0.0


def test_ties_are_accepted_together():
    # Two queries at 0.2, one right and one wrong: a threshold cannot split them.
    chosen, figures = open_set.choose_threshold([0.1, 0.2, 0.2], [True, True, False],
                                                [True] * 3, 0.7)
    assert chosen == pytest.approx(0.15) and figures["accepted"] == 1


def test_every_query_accepted_keeps_the_farthest_distance():
    chosen, figures = open_set.choose_threshold([0.1, 0.3], [True, True], [True, True], 0.9)
    assert chosen == pytest.approx(0.3) and figures["recall"] == 1.0


def test_unreachable_and_bad_targets():
    with pytest.raises(ValueError, match="no distance threshold reaches precision 0.95 on these "
                                         "2 queries \\(the best is 0.500\\)"):
        open_set.choose_threshold([0.1, 0.2], [False, True], [True, True], 0.95)
    with pytest.raises(ValueError, match="precision must be in \\(0, 1\\]. Received: "
                                         "precision=1.5"):
        open_set.choose_threshold(DISTANCES, CORRECT, KNOWN, 1.5)
    with pytest.raises(ValueError, match="none of the 2 calibration queries is of a class in "
                                         "the index"):
        open_set.choose_threshold([0.1, 0.2], [False, False], [False, False], 0.9)


def _oracle(gallery, gallery_labels, queries, query_labels, threshold):
    """Precision and recall by brute force, straight from the definitions."""
    d = np.linalg.norm(queries[:, None] - gallery[None], axis=2)
    nearest = d.argmin(1)
    answered = d.min(1) <= threshold
    right = np.asarray(gallery_labels)[nearest] == np.asarray(query_labels)
    known = np.isin(query_labels, gallery_labels)
    return (answered & right).sum() / answered.sum(), (answered & right).sum() / known.sum()


def _cloud(centres, classes, per_class, spread, rng):
    labels = np.repeat(classes, per_class)
    x = centres[labels] + spread * rng.standard_normal((len(labels), centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        [f"c{v}" for v in labels]


def _scene(rng, classes, dim, known, unknown, per_query, spread):
    """(gallery, calibration queries, test queries) on `classes` unit-norm class centres: the
    gallery holds classes 0..known-1 (5 items each); the unknown classes are the last
    `unknown` ones. Calibration draws the first half of the known and of the unknown classes,
    the test the other halves, so the classes it reports on were never calibrated on."""
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    first_unknown = len(centres) - unknown
    gallery = _cloud(centres, np.arange(known), 5, spread, rng)
    half, unknown_half = known // 2, first_unknown + unknown // 2
    calibration = _cloud(centres, np.r_[0:half, first_unknown:unknown_half], per_query,
                         spread, rng)
    test = _cloud(centres, np.r_[half:known, unknown_half:len(centres)], per_query, spread,
                  rng)
    return gallery, calibration, test


def test_calibrated_on_some_classes_holds_on_disjoint_ones():
    """Gallery: classes 0-19. Calibration queries: classes 0-9 (in the gallery) and 40-49
    (absent); test queries: classes 10-19 (in the gallery) and 50-59 (absent). Classes are
    tight clusters far apart, so a query's nearest item is of its class at distance about 0.2
    if the class is in the gallery, and at about 1.4 if not: any threshold between answers
    every test query right."""
    (gallery, gallery_labels), calibration, test = _scene(
        np.random.default_rng(0), classes=60, dim=64, known=20, unknown=20, per_query=4, spread=0.02)
    index = EmbeddingIndex(gallery, gallery_labels)

    record = index.calibrate(*calibration, precision=0.95)
    threshold = record["threshold"]
    assert record["calibrated_on"]["precision"] == 1.0 and record["calibrated_on"]["recall"] == 1.0
    # Halfway between the farthest known query and the nearest unknown one.
    nearest = index.search(calibration[0], k=1, threshold=math.inf).distances[:, 0]
    assert nearest[:40].max() < 0.5 < 1.0 < nearest[40:].min()
    assert threshold == pytest.approx((nearest[:40].max() + nearest[40:].min()) / 2)

    figures = index.open_set_metrics(*test)
    assert figures["known_queries"] == figures["unknown_queries"] == 40
    assert (figures["precision"], figures["recall"]) == (1.0, 1.0)
    assert figures["unknown_rejection_rate"] == 1.0 and figures["accuracy"] == 1.0
    assert (figures["precision"], figures["recall"]) == _oracle(
        gallery, gallery_labels, test[0], test[1], threshold)

    # search answers unknown for the absent classes only, with the stored threshold.
    found = index.search(test[0], k=3)
    assert found.threshold == threshold
    np.testing.assert_array_equal(found.unknown, ~np.isin(test[1], gallery_labels))


def test_overlapping_classes_trade_recall_for_precision():
    """Spread classes: some nearest neighbours are of the wrong class and some absent
    classes come close. The figures at the calibrated threshold equal the brute-force
    oracle's on the disjoint test classes, and a stricter target never gives more recall."""
    (gallery, gallery_labels), calibration, test = _scene(
        np.random.default_rng(1), classes=200, dim=16, known=100, unknown=100, per_query=3, spread=0.25)
    index = EmbeddingIndex(gallery, gallery_labels)
    recalls = []
    for target in (0.8, 0.9, 0.97):
        record = index.calibrate(*calibration, precision=target)
        assert record["calibrated_on"]["precision"] >= target
        figures = index.open_set_metrics(*test)
        precision, recall = _oracle(gallery, gallery_labels, *test, record["threshold"])
        assert figures["precision"] == pytest.approx(precision)
        assert figures["recall"] == pytest.approx(recall)
        recalls.append(figures["recall"])
    assert recalls[0] >= recalls[1] >= recalls[2] and recalls[0] > recalls[2]


def test_open_set_metrics_needs_a_threshold():
    index = EmbeddingIndex(np.eye(2, 8, dtype=np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="run `dnc-keras calibrate` first"):
        index.open_set_metrics(np.eye(1, 8), ["a"])
    with pytest.raises(ValueError, match="need one label per query. Received 1 queries and 2"):
        index.calibrate(np.eye(1, 8), ["a", "b"])
