import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from dnc_keras.evaluation import query_gallery_metrics, raw_pixel_baseline, retrieval_metrics

# Five points on a line; A = {0, 1, 4} (R = 2 each), B = {2, 3} (R = 1 each).
LINE = np.array([[0.0], [1.0], [2.5], [4.5], [1.8]])
LINE_LABELS = np.array(["A", "A", "B", "B", "A"])


def test_leave_one_out_hand_computed():
    # Neighbours by distance (self removed), 1 = same class:
    #   q0 A at 0.0: 1 (1.0, A), 4 (1.8, A), 2 (2.5, B), 3 (4.5, B)  -> 1 1 0 0
    #   q1 A at 1.0: 4 (0.8, A), 0 (1.0, A), 2 (1.5, B), 3 (3.5, B)  -> 1 1 0 0
    #   q2 B at 2.5: 4 (0.7, A), 1 (1.5, A), 3 (2.0, B), 0 (2.5, A)  -> 0 0 1 0
    #   q3 B at 4.5: 2 (2.0, B), 4 (2.7, A), 1 (3.5, A), 0 (4.5, A)  -> 1 0 0 0
    #   q4 A at 1.8: 2 (0.7, B), 1 (0.8, A), 0 (1.8, A), 3 (2.7, B)  -> 0 1 1 0
    # R@1 = (1+1+0+1+0)/5 = 0.6; R@2 = (1+1+0+1+1)/5 = 0.8; R@3 = R@4 = 5/5 = 1.0;
    # R@8 > 4 others counts all of them: 1.0.
    # MAP@R: q0 R=2: (1/1 + 2/2)/2 = 1; q1: 1; q2 R=1: 0/1 = 0; q3 R=1: (1/1)/1 = 1;
    #   q4 R=2: (1/2)/2 = 0.25 (dividing by the 1 hit instead would give 0.5).
    #   (1 + 1 + 0 + 1 + 0.25)/5 = 0.65.
    # R-precision: (2/2 + 2/2 + 0/1 + 1/1 + 1/2)/5 = 3.5/5 = 0.7.
    m = retrieval_metrics(LINE, LINE_LABELS, ks=(1, 2, 3, 4, 8), nmi=False)
    assert set(m) == {"R@1", "R@2", "R@3", "R@4", "R@8", "MAP@R", "R-precision"}
    assert m["R@1"] == pytest.approx(0.6)
    assert m["R@2"] == pytest.approx(0.8)
    assert m["R@3"] == m["R@4"] == m["R@8"] == pytest.approx(1.0)
    assert m["MAP@R"] == pytest.approx(0.65)
    assert m["R-precision"] == pytest.approx(0.7)


def test_query_without_other_items_of_its_class():
    # A singleton class C far away (R = 0): a miss for every Recall@K, left out of MAP@R and
    # R-precision. It is every other query's last neighbour, beyond their R, so they keep their
    # scores: R@1 = 3/6 = 0.5, R@2 = 4/6, MAP@R = 0.65, R-precision = 0.7 over the 5 others.
    x = np.vstack([LINE, [[10.0]]])
    labels = np.append(LINE_LABELS, "C")
    m = retrieval_metrics(x, labels, ks=(1, 2), nmi=False)
    assert m["R@1"] == pytest.approx(0.5)
    assert m["R@2"] == pytest.approx(4 / 6)
    assert m["MAP@R"] == pytest.approx(0.65)
    assert m["R-precision"] == pytest.approx(0.7)
    m = retrieval_metrics([[0.0], [1.0]], ["A", "B"], ks=(1,), nmi=False)
    assert m["R@1"] == 0.0 and np.isnan(m["MAP@R"]) and np.isnan(m["R-precision"])


def test_query_gallery_hand_computed():
    gallery = np.array([[0.0], [1.0], [2.0], [3.0]])
    gallery_labels = np.array(["A", "B", "A", "B"])  # R = 2 for both classes
    queries = np.array([[0.4], [2.9], [1.2]])
    query_labels = np.array(["A", "A", "B"])
    # q0 A at 0.4: g0 (0.4, A), g1 (0.6, B), g2 (1.6, A), g3 (2.6, B) -> 1 0 1 0
    # q1 A at 2.9: g3 (0.1, B), g2 (0.9, A), g1 (1.9, B), g0 (2.9, A) -> 0 1 0 1
    # q2 B at 1.2: g1 (0.2, B), g2 (0.8, A), g0 (1.2, A), g3 (1.8, B) -> 1 0 0 1
    # R@1 = 2/3; R@2 = 3/3.
    # MAP@R (R = 2): q0 (1/1)/2 = 0.5; q1 (1/2)/2 = 0.25; q2 (1/1)/2 = 0.5 -> 1.25/3.
    # R-precision: (1/2 + 1/2 + 1/2)/3 = 0.5.
    m = query_gallery_metrics(queries, query_labels, gallery, gallery_labels, ks=(1, 2))
    assert m["R@1"] == pytest.approx(2 / 3)
    assert m["R@2"] == pytest.approx(1.0)
    assert m["MAP@R"] == pytest.approx(1.25 / 3)
    assert m["R-precision"] == pytest.approx(0.5)
    assert "NMI" not in m


def test_query_gallery_does_not_leave_out_identical_items():
    # The query equals gallery item 0 of its class: nothing is removed, so it is the first hit.
    m = query_gallery_metrics([[0.0]], ["A"], [[0.0], [0.1], [5.0]], ["A", "B", "A"], ks=(1,))
    assert m["R@1"] == 1.0
    assert m["MAP@R"] == pytest.approx(0.5)  # R = 2, hits at ranks 1 and 3: (1/1)/2


def test_exact_duplicates_are_kept_as_neighbours():
    # Removing the query by zero distance would also remove its duplicate (R@1 = 0).
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    m = retrieval_metrics(x, [0, 0, 1, 1], ks=(1,), nmi=False)
    assert m["R@1"] == 1.0 and m["MAP@R"] == 1.0
    # Each item's exact duplicate has the other class: whichever of the query and its duplicate
    # faiss lists first, only the query is removed, so every first neighbour is a miss. (Dropping
    # the first neighbour instead would sometimes keep the query and score a hit.)
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    for batch_size in (1, 4):
        m = retrieval_metrics(x, ["A", "B", "A", "B"], ks=(1,), nmi=False, batch_size=batch_size)
        assert m["R@1"] == 0.0 and m["MAP@R"] == 0.0


def test_many_duplicates_beyond_the_searched_depth():
    # 30 identical items: the query may not be among the first depth + 1 that faiss returns.
    x = np.concatenate([np.zeros((30, 4)), np.ones((5, 4))])
    labels = np.array([0] * 30 + [1] * 5)
    m = retrieval_metrics(x, labels, ks=(1, 2), nmi=False)
    assert m["R@1"] == m["R@2"] == m["MAP@R"] == m["R-precision"] == 1.0


def _integer_blobs(class_sizes, dim=3, seed=0):
    """Integer coordinates below 1000: faiss's float32 distances are then exact, so its ranking
    matches the float64 oracle's whenever the oracle has no ties (checked by the tests)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    centres = rng.integers(100, 900, size=(len(class_sizes), dim))
    x = np.clip(centres[labels] + rng.normal(0, 120, size=(len(labels), dim)).round(), 0, 999)
    return x.astype(np.float32), labels


def _oracle(query, query_labels, gallery, gallery_labels, ks, leave_one_out):
    """Full distance matrix, argsort, and the definitions written out query by query."""
    d = ((query[:, None, :].astype(np.float64) - gallery[None, :, :]) ** 2).sum(-1)
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    if leave_one_out:
        order = order[:, :-1]
    for row, ranking in zip(d, order):
        finite = row[ranking]
        assert len(np.unique(finite)) == len(finite), "oracle needs distinct distances"
    recall = {k: [] for k in ks}
    average_precision, r_precision = [], []
    for i, ranking in enumerate(order):
        same = gallery_labels[ranking] == query_labels[i]
        for k in ks:
            recall[k].append(float(same[:k].any()))
        r = int(np.sum(gallery_labels == query_labels[i])) - (1 if leave_one_out else 0)
        if r == 0:
            continue
        precision = [same[:rank + 1].sum() / (rank + 1) for rank in range(r)]
        average_precision.append(sum(p for p, hit in zip(precision, same[:r]) if hit) / r)
        r_precision.append(same[:r].sum() / r)
    out = {f"R@{k}": np.mean(recall[k]) for k in ks}
    out["MAP@R"] = np.mean(average_precision)
    out["R-precision"] = np.mean(r_precision)
    return out


KS = (1, 2, 4, 8, 16, 500)


def test_retrieval_metrics_match_brute_force_oracle():
    x, labels = _integer_blobs([1, 2, 3, 5, 8, 13, 20, 2, 30, 4])
    expected = _oracle(x, labels, x, labels, KS, leave_one_out=True)
    m = retrieval_metrics(x, labels, ks=KS, nmi=False, batch_size=16)
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_query_gallery_metrics_match_brute_force_oracle():
    x, labels = _integer_blobs([3, 4, 6, 10, 15, 2, 25, 7], seed=1)
    rng = np.random.default_rng(1)
    is_query = rng.random(len(x)) < 0.3
    qx, ql, gx, gl = x[is_query], labels[is_query], x[~is_query], labels[~is_query]
    expected = _oracle(qx, ql, gx, gl, KS, leave_one_out=False)
    m = query_gallery_metrics(qx, ql, gx, gl, ks=KS, batch_size=5)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((97, 8)).astype(np.float32)
    labels = rng.integers(0, 12, size=97)
    whole = retrieval_metrics(x, labels, nmi=False, batch_size=10_000)
    for batch_size in (1, 7, 96):
        assert retrieval_metrics(x, labels, nmi=False, batch_size=batch_size) == whole
    whole = query_gallery_metrics(x[:30], labels[:30], x[30:], labels[30:], batch_size=10_000)
    assert query_gallery_metrics(x[:30], labels[:30], x[30:], labels[30:], batch_size=4) == whole


def test_nmi_is_one_on_separable_classes():
    rng = np.random.default_rng(0)
    centres = 20.0 * rng.standard_normal((5, 8))
    labels = np.repeat(np.arange(5), 10)
    x = centres[labels] + 0.1 * rng.standard_normal((50, 8))
    m = retrieval_metrics(x, labels)
    assert m["NMI"] == pytest.approx(1.0)
    assert normalized_mutual_info_score(labels, labels) == pytest.approx(m["NMI"])
    assert m["R@1"] == 1.0 and m["MAP@R"] == 1.0
    m = query_gallery_metrics(x[::2], labels[::2], x[1::2], labels[1::2], nmi=True)
    assert m["NMI"] == pytest.approx(1.0)


def test_raw_pixel_baseline_flattens_and_normalises():
    rng = np.random.default_rng(0)
    images = rng.random((40, 4, 4, 1)).astype(np.float32)
    images[0] = 0.0  # a blank image must not produce NaN
    labels = np.repeat(np.arange(8), 5)
    flat = images.reshape(40, -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    normalised = flat / np.where(norms > 0, norms, 1.0)
    expected = retrieval_metrics(normalised, labels, ks=(1, 2), nmi=False)
    assert raw_pixel_baseline(images, labels, ks=(1, 2), nmi=False) == expected
    # Brightness does not matter once normalised (powers of 2 keep float32 rounding identical).
    scaled = images * np.exp2(rng.integers(0, 5, size=40))[:, None, None, None]
    assert raw_pixel_baseline(scaled, labels, ks=(1, 2), nmi=False) == expected


@pytest.mark.parametrize("embeddings, labels, kwargs, match", [
    (np.zeros((4, 2)), [0, 0, 1], {}, "one entry per row"),
    (np.zeros(4), [0, 0, 1, 1], {}, "non-empty 2-D"),
    (np.array([[0.0], [np.nan], [1.0]]), [0, 0, 1], {}, "finite"),
    (np.array([[0.0], [np.inf], [1.0]]), [0, 0, 1], {}, "finite"),
    (np.zeros((1, 2)), [0], {}, "at least 2 items"),
    (np.zeros((4, 2)), [0, 0, 1, 1], {"ks": (0,)}, "ks must be"),
    (np.zeros((4, 2)), [0, 0, 1, 1], {"ks": ()}, "ks must be"),
    (np.zeros((4, 2)), [0, 0, 1, 1], {"batch_size": 0}, "batch_size must be"),
])
def test_retrieval_metrics_validates(embeddings, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(embeddings, labels, nmi=False, **kwargs)


def test_query_gallery_metrics_validates():
    with pytest.raises(ValueError, match="same width"):
        query_gallery_metrics(np.zeros((2, 3)), [0, 1], np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="gallery_emb labels"):
        query_gallery_metrics(np.zeros((2, 3)), [0, 1], np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match="query_emb must be finite"):
        query_gallery_metrics(np.full((2, 3), np.nan), [0, 1], np.zeros((2, 3)), [0, 1])
