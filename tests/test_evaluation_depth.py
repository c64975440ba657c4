"""Recall@K beyond faiss's search depth comes from counting; it must match the oracle."""

import numpy as np
import pytest

from dnc_keras import evaluation
from test_evaluation import _integer_blobs, _oracle

KS = (1, 3, 5, 20, 40, 60, 1000)


@pytest.mark.parametrize("max_depth", [1, 4, 32])
def test_deep_recall_by_counting_matches_oracle(monkeypatch, max_depth):
    monkeypatch.setattr(evaluation, "_MAX_SEARCH_DEPTH", max_depth)
    x, labels = _integer_blobs([1, 2, 3, 5, 8, 13, 20, 2, 30, 4, 6], dim=3, seed=3)
    expected = _oracle(x, labels, x, labels, KS, leave_one_out=True)
    m = evaluation.retrieval_metrics(x, labels, ks=KS, nmi=False, batch_size=7)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("max_depth", [1, 32])
def test_deep_recall_query_gallery_matches_oracle(monkeypatch, max_depth):
    monkeypatch.setattr(evaluation, "_MAX_SEARCH_DEPTH", max_depth)
    monkeypatch.setattr(evaluation, "_COUNT_BLOCK", 50)  # several counting blocks
    x, labels = _integer_blobs([3, 4, 6, 10, 15, 2, 25, 7, 1], dim=3, seed=4)
    is_query = np.random.default_rng(4).random(len(x)) < 0.3
    qx, ql, gx, gl = x[is_query], labels[is_query], x[~is_query], labels[~is_query]
    expected = _oracle(qx, ql, gx, gl, KS, leave_one_out=False)
    m = evaluation.query_gallery_metrics(qx, ql, gx, gl, ks=KS, batch_size=5)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_query_without_class_mates_misses_even_when_k_exceeds_the_gallery():
    x = np.array([[0.0], [0.1], [5.0]], np.float32)
    m = evaluation.retrieval_metrics(x, [0, 0, 1], ks=(1, 50), nmi=False)
    assert m["R@50"] == pytest.approx(2 / 3)
