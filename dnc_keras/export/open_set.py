"""Open-set search: a distance threshold beyond which the answer is "unknown".

A query's answer is the label of its nearest gallery item if that item lies within the
threshold t (distance <= t), and "unknown" otherwise. Over queries of known classes:

- a query is *known* if its class has items in the gallery (a right label exists), *unknown*
  otherwise (the right answer is "unknown");
- a query is *accepted* if its nearest item is within t; a *correct accept* is an accepted
  query whose nearest item has the query's class;
- precision(t) = correct accepts / accepted queries: how often an answer given is right;
- recall(t) = correct accepts / known queries: how many of the queries that could be
  identified are, so a wrong nearest neighbour counts against it at every t;
- unknown rejection rate = unknown queries answered "unknown" / unknown queries;
- accuracy = (correct accepts + unknown queries rejected) / queries.

Recall grows with t and precision usually falls. `choose_threshold` takes, among the thresholds
whose precision on the calibration queries reaches the target, the one with the most recall
(the fewest answers, on a tie), and places it halfway between the farthest query it accepts
and the nearest it rejects: the same answers on these queries, a margin for new ones.
Everything here is numpy on the nearest distances and labels; `EmbeddingIndex.calibrate` runs
the search.
"""

import numpy as np


def outcomes(predicted, truth, gallery_labels):
    """(correct, known) bool arrays of queries: the nearest item's label is the query's, and the
    query's class is in the gallery."""
    predicted = np.asarray(predicted, dtype=object)
    truth = np.asarray(truth, dtype=object)
    return predicted == truth, np.isin(truth, np.asarray(list(gallery_labels), dtype=object))


def metrics_at(threshold, distances, correct, known):
    """Open-set figures of queries answered at `threshold` (see the module docstring).

    Args:
        threshold: the largest distance answered with a label (`inf`: always answer).
        distances: [n] distance of each query's nearest gallery item (`inf` if none).
        correct: [n] bool, that item has the query's class.
        known: [n] bool, the query's class is in the gallery.

    Returns:
        dict of counts and rates; a rate with an empty denominator is `None`.
    """
    distances, correct, known = _arrays(distances, correct, known)
    accepted = distances <= threshold
    hits = int((accepted & correct).sum())
    rejected_unknown = int((~accepted & ~known).sum())
    return {"threshold": float(threshold), "queries": int(len(distances)),
            "known_queries": int(known.sum()), "unknown_queries": int((~known).sum()),
            "accepted": int(accepted.sum()), "correct_accepted": hits,
            "precision": _rate(hits, accepted.sum()), "recall": _rate(hits, known.sum()),
            "unknown_rejection_rate": _rate(rejected_unknown, (~known).sum()),
            "accuracy": _rate(hits + rejected_unknown, len(distances))}


def choose_threshold(distances, correct, known, precision):
    """The threshold of most recall at which precision >= `precision` (see the module
    docstring), and the figures there (`metrics_at`).

    Raises:
        ValueError: `precision` outside (0, 1], no known query, or no threshold reaches it.
    """
    if not 0 < precision <= 1:
        raise ValueError(f"precision must be in (0, 1]. Received: precision={precision}")
    distances, correct, known = _arrays(distances, correct, known)
    if not known.any():
        raise ValueError(f"none of the {len(distances)} calibration queries is of a class in the "
                         "index: calibration needs queries of gallery classes (and, to learn to "
                         "answer unknown, of classes absent from it)")
    order = np.argsort(distances, kind="stable")
    ordered = distances[order]
    hits = np.cumsum(correct[order])
    # A threshold at ordered[i] accepts every query up to the last one at that distance; only
    # thresholds that accept one more correct answer than the previous one add recall.
    ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True] & np.isfinite(ordered))
    gains = ends[hits[ends] > np.r_[0, hits[ends][:-1]]]
    precisions = hits[gains] / (gains + 1)
    reached = gains[hits[gains] >= precision * (gains + 1) - 1e-9]
    if not len(reached):
        best = precisions.max() if len(precisions) else 0.0
        raise ValueError(f"no distance threshold reaches precision {precision} on these "
                         f"{len(distances)} queries (the best is {best:.3f}): lower --precision "
                         "or calibrate with a better model")
    last = reached[-1]
    # Halfway to the nearest query it rejects: the same answers here, a margin for new ones.
    threshold = float(ordered[last])
    if last + 1 < len(ordered) and np.isfinite(ordered[last + 1]):
        threshold = float((ordered[last] + ordered[last + 1]) / 2)
    return threshold, metrics_at(threshold, distances, correct, known)


def _arrays(distances, correct, known):
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    known = np.asarray(known, dtype=bool).reshape(-1)
    if not len(distances) == len(correct) == len(known) or not len(distances):
        raise ValueError(f"need one distance, correct and known flag per query. Received "
                         f"{len(distances)}, {len(correct)}, {len(known)}")
    return distances, correct, known


def _rate(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else None
