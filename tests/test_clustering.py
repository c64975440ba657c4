import numpy as np
import pytest

from dnc_keras import clustering
from dnc_keras.clustering import (ClusteringError, cluster, divide_clusters,
                                  drop_single_image_classes, is_acceptable, kmeans,
                                  match_clusters, max_learners)

BACKENDS = ("faiss", "sklearn")


def _blobs(num_blobs, classes_per_blob=4, images_per_class=5, dim=16, seed=0):
    """Well-separated unit-norm blobs; blob b holds its own `classes_per_blob` classes."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * rng.standard_normal((num_blobs, dim))
    per_blob = classes_per_blob * images_per_class
    blob = np.repeat(np.arange(num_blobs), per_blob)
    x = centres[blob] + 0.1 * rng.standard_normal((len(blob), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_blobs * classes_per_blob), images_per_class)
    return x.astype(np.float32), labels, blob


def _same_partition(a, b):
    """Whether two assignments are equal up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _square(seed=0):
    """Four tight groups at the corners of a square, so 2-means splits it either horizontally or
    vertically depending on the seed. The left column holds only class 0, so a vertical split is
    unacceptable; a horizontal one gives {0, 1} and {0, 2}."""
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    x = np.concatenate([corners[g] + 0.01 * rng.standard_normal((4, 2)) for g in range(4)])
    labels = np.repeat([0, 1, 0, 2], 4)
    return x, labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_separable_blobs(backend):
    x, _, blob = _blobs(4)
    assignment = kmeans(x, 4, seed=0, backend=backend)
    assert assignment.dtype == np.int64 and assignment.shape == (len(x),)
    assert _same_partition(assignment, blob)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_gives_acceptable_clustering_on_blobs(backend):
    x, labels, blob = _blobs(3)
    assignment = cluster(x, labels, 3, backend=backend)
    assert is_acceptable(assignment, labels, 3)
    assert _same_partition(assignment, blob)


def test_kmeans_is_deterministic_per_seed():
    x, _, _ = _blobs(3, images_per_class=3)
    for backend in BACKENDS:
        np.testing.assert_array_equal(kmeans(x, 5, seed=3, backend=backend),
                                      kmeans(x, 5, seed=3, backend=backend))


def test_faiss_does_not_subsample_by_default(monkeypatch):
    seen = {}
    original = clustering.faiss.Kmeans

    def spy(d, k, **kwargs):
        seen.update(kwargs)
        return original(d, k, **kwargs)

    monkeypatch.setattr(clustering.faiss, "Kmeans", spy)
    x, _, _ = _blobs(2)
    kmeans(x, 2, backend="faiss")
    assert seen["max_points_per_centroid"] >= len(x)
    assert seen["niter"] == 100 and seen["seed"] == 0


def _fit_sizes(monkeypatch):
    """Rows each scikit-learn k-means of `clustering` is fitted on."""
    sizes = []
    original = clustering.KMeans

    class Recording(original):
        def fit(self, x, *args, **kwargs):
            sizes.append(len(x))
            return super().fit(x, *args, **kwargs)

    monkeypatch.setattr(clustering, "KMeans", Recording)
    return sizes


def test_auto_fits_a_sample_of_many_rows_and_assigns_every_row(monkeypatch):
    sizes = _fit_sizes(monkeypatch)
    # 8 blobs of 1,000 rows: 8,000 > max(256 x 8, 4,096): fitted on 4,096, all rows assigned.
    x, _, blob = _blobs(8, classes_per_blob=200, images_per_class=5)
    got = kmeans(x, 8, seed=1)
    assert sizes == [4096] and len(got) == len(x)
    assert _same_partition(got, blob)
    np.testing.assert_array_equal(got, kmeans(x, 8, seed=1))  # the sample is seeded


def test_auto_fits_every_row_up_to_4096(monkeypatch):
    sizes = _fit_sizes(monkeypatch)
    x, _, blob = _blobs(2, classes_per_blob=400, images_per_class=5)  # 4,000 rows, K = 2
    assert _same_partition(kmeans(x, 2), blob) and sizes == [4000]


def test_auto_rule():
    assert clustering._choose_backend(128, 8) == "sklearn"
    assert clustering._choose_backend(128, 2) == "sklearn"
    assert clustering._choose_backend(128, 32) == "faiss"
    assert clustering._choose_backend(2048, 2) == "faiss"
    assert clustering._choose_backend(512, 16, 60_000) == "faiss"
    assert clustering._choose_backend(512, 8, 60_000) == "sklearn"
    assert clustering._choose_backend(128, 16, 60_000) == "sklearn"
    assert clustering._choose_backend(128, 16, 10_000) == "faiss"
    assert clustering._choose_backend(128, 8, 10_000) == "sklearn"


@pytest.mark.parametrize("bad, match", [(0, "num_clusters must be >= 1"),
                                        (61, "num_clusters must be <= the number of samples"),
                                        (2.5, "num_clusters must be an integer")])
def test_kmeans_rejects_bad_num_clusters(bad, match):
    x, _, _ = _blobs(3)
    with pytest.raises(ValueError, match=match):
        kmeans(x, bad)


def test_kmeans_rejects_non_finite_and_bad_backend():
    x, _, _ = _blobs(2)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        kmeans(x, 2)
    with pytest.raises(ValueError, match="must be a non-empty 2-D"):
        kmeans(np.zeros(5), 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        kmeans(np.zeros((5, 2)), 2, backend="torch")


def _greedy_kmeans_plus_plus_oracle(x, num_clusters, seed, trials):
    """The exact greedy k-means++ rule in numpy (full distance matrix, every row's potential
    lowered by every centre), drawing from the same random stream as the package."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    distances = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    chosen = [int(rng.integers(len(x)))]
    potential = distances[chosen[0]].copy()
    for _ in range(1, num_clusters):
        cumulative = np.cumsum(potential)
        draws = rng.uniform(size=trials) * cumulative[-1]
        candidates = np.searchsorted(cumulative, draws, side="right")
        totals = [np.minimum(potential, distances[c]).sum() for c in candidates]
        best = int(candidates[int(np.argmin(totals))])
        chosen.append(best)
        potential = np.minimum(potential, distances[best])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_kmeans_plus_plus_is_the_exact_rule_with_every_row_a_neighbour(seed):
    x = np.random.default_rng(seed).standard_normal((40, 3)).astype(np.float32)
    chosen = clustering.greedy_kmeans_plus_plus(x, 8, seed=seed, neighbours=40, trials=4)
    assert chosen.tolist() == _greedy_kmeans_plus_plus_oracle(x, 8, seed, trials=4)
    assert len(set(chosen.tolist())) == 8


def _many_small_classes(classes=400, per_class=5, dim=64, noise=0.8, seed=0):
    """Unit class centres plus noise: NMI's case, one cluster per class of a few rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    x = centres[labels] + noise / np.sqrt(dim) * rng.standard_normal((len(labels), dim))
    return x.astype(np.float32), labels


def test_kmeans_plus_plus_start_reaches_scikit_learns_nmi_on_many_small_classes():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    x, labels = _many_small_classes()
    greedy = nmi(labels, kmeans(x, 400, backend="faiss", init="k-means++"))
    random_rows = nmi(labels, kmeans(x, 400, backend="faiss"))
    reference = nmi(labels, KMeans(400, random_state=0).fit(x).labels_)
    # Random rows leave classes without a centre; the greedy start does not (hand-run: random
    # 0.943, greedy 0.989, scikit-learn 0.986).
    assert greedy >= reference - 0.01
    assert greedy >= random_rows + 0.02


def test_greedy_kmeans_plus_plus_on_coincident_rows_and_bad_arguments():
    x = np.zeros((6, 2), dtype=np.float32)  # every potential is 0 after the first centre
    chosen = clustering.greedy_kmeans_plus_plus(x, 3)
    assert chosen.shape == (3,) and chosen.min() >= 0 and chosen.max() < 6
    with pytest.raises(ValueError, match="num_clusters must be <= the number of rows"):
        clustering.greedy_kmeans_plus_plus(x, 7)
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        clustering.greedy_kmeans_plus_plus(x, 2, neighbours=0)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans(x, 2, init="random")


def test_is_acceptable_cases():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert is_acceptable([0, 0, 0, 0, 1, 1, 1, 1], labels, 2)
    # Cluster 1 holds class 2 twice but class 3 once: one usable class.
    assert not is_acceptable([0, 0, 0, 0, 1, 1, 1, 0], labels, 2)
    # Cluster 0 holds a single class.
    assert not is_acceptable([0, 0, 1, 1, 1, 1, 1, 1], labels, 2)
    # Cluster 2 is empty.
    assert not is_acceptable([0, 0, 0, 0, 1, 1, 1, 1], labels, 3)
    # A class split 2 + 2 counts in both clusters; -1 entries are ignored.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 5])
    assert is_acceptable([0, 0, 1, 1, 0, 0, 1, 1, -1], labels, 2)
    assert not is_acceptable([0, 0, 1, -1, 0, 0, 1, 1, -1], labels, 2)


def test_max_learners():
    assert max_learners([0, 0, 1, 1, 2, 2, 3, 3, 4]) == 2  # 4 usable classes
    assert max_learners([0, 0, 1, 1, 2, 2, 3]) == 1  # 3 usable classes
    assert max_learners([0, 1, 2]) == 0


def test_feasibility_bound_matches_brute_force():
    # Every assignment of up to 8 images into K clusters, against the closed form.
    for labels in ([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1, 1, 1],
                   [0, 0, 0, 1, 1, 1, 2, 2], [0, 1, 2, 3, 4, 4, 5, 5]):
        labels = np.array(labels)
        brute = 0
        for k in range(1, 4):
            grid = np.stack(np.meshgrid(*[np.arange(k)] * len(labels)), -1).reshape(-1, len(labels))
            if any(is_acceptable(a, labels, k) for a in grid):
                brute = k
        assert min(clustering._max_feasible_clusters(labels), 3) == brute, labels


def test_cluster_retries_with_next_seeds(monkeypatch):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    bad = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    good = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    seeds = []

    def fake_kmeans(x, k, seed=0, backend="auto"):
        seeds.append(seed)
        return good if seed == 7 else bad

    monkeypatch.setattr(clustering, "kmeans", fake_kmeans)
    np.testing.assert_array_equal(cluster(np.zeros((8, 2)), labels, 2, seed=5), good)
    assert seeds == [5, 6, 7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_retries_on_real_data_where_a_seed_fails(backend):
    x, labels = _square()
    outcomes = [is_acceptable(kmeans(x, 2, seed=s, backend=backend), labels, 2)
                for s in range(30)]
    assert not all(outcomes) and any(outcomes), "the square should split both ways"
    failing = outcomes.index(False)
    first_good = outcomes.index(True, failing)
    assignment = cluster(x, labels, 2, seed=failing, backend=backend)
    assert is_acceptable(assignment, labels, 2)
    np.testing.assert_array_equal(assignment, kmeans(x, 2, seed=first_good, backend=backend))


def test_cluster_k1_returns_zeros_without_kmeans(monkeypatch):
    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means must not run for K=1")

    monkeypatch.setattr(clustering, "kmeans", no_kmeans)
    x, labels, _ = _blobs(2)
    assignment = cluster(x, labels, 1)
    np.testing.assert_array_equal(assignment, np.zeros(len(x), dtype=np.int64))


def test_cluster_rejects_too_many_clusters_early():
    x, labels, _ = _blobs(2, classes_per_blob=3, images_per_class=3)  # at most 3 clusters
    with pytest.raises(ClusteringError, match=r"num_clusters must be <= 3.*6 of the 6 classes"
                                              r".*Received: num_clusters=4"):
        cluster(x, labels, 4)
    with pytest.raises(ValueError):  # ClusteringError is a ValueError
        cluster(x, labels, 4)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        cluster(x, labels[:-1], 2)


def test_cluster_raises_when_no_try_is_acceptable():
    # A far, tight blob of one class: every 2-means puts it alone in a cluster.
    rng = np.random.default_rng(0)
    near = rng.standard_normal((40, 4))
    far = 100.0 + 0.01 * rng.standard_normal((10, 4))
    x = np.concatenate([near, far])
    labels = np.concatenate([np.repeat(np.arange(8), 5), np.full(10, 99)])
    with pytest.raises(ClusteringError, match=r"num_clusters=2 after 3 tries \(seeds 4..6\).*"
                                              r"9 classes have 2 images"):
        cluster(x, labels, 2, seed=4, max_tries=3)


def test_match_clusters_recovers_a_swap():
    old = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    swap = np.array([1, 0, 2])
    np.testing.assert_array_equal(match_clusters(swap[old], old, 3), old)


def test_match_clusters_recovers_a_three_cycle():
    old = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    cycle = np.array([1, 2, 0, 3])  # old 0 -> new 1, old 1 -> new 2, old 2 -> new 0
    new = cycle[old]
    np.testing.assert_array_equal(match_clusters(new, old, 4), old)
    # The backwards mapping of the official codes, cycle[new], scrambles it instead.
    assert not np.array_equal(cycle[new], old)


def test_match_clusters_with_moved_and_dropped_samples():
    old = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    cycle = np.array([2, 0, 1])
    new = cycle[old]
    new[0] = cycle[1]  # sample 0 moves to the new cluster that holds old cluster 1
    new[5] = -1  # dropped in the new assignment
    old_with_drops = old.copy()
    old_with_drops[9] = -1  # dropped in the old assignment
    expected = old.copy()
    expected[0] = 1
    expected[5] = -1
    np.testing.assert_array_equal(match_clusters(new, old_with_drops, 3), expected)


def test_match_clusters_validates():
    with pytest.raises(ValueError, match="outside"):
        match_clusters([0, 3], [0, 1], 2)
    with pytest.raises(ValueError, match="one entry per sample"):
        match_clusters([0, 1, 1], [0, 1], 2)


def test_drop_single_image_classes():
    assignment = np.array([0, 0, 0, 1, 1, 1, 1, -1])
    labels = np.array([5, 5, 6, 6, 7, 7, 8, 5])
    # Cluster 0: class 5 twice, class 6 once -> drop 2. Cluster 1: class 6 once (3), class 7
    # twice, class 8 once (6). Sample 7 was already dropped.
    expected = np.array([0, 0, -1, -1, 1, 1, -1, -1])
    out = drop_single_image_classes(assignment, labels)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(assignment, [0, 0, 0, 1, 1, 1, 1, -1])  # input untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_divide_clusters_children_partition_parents(backend):
    x, labels, blob = _blobs(4, classes_per_blob=4)
    parents = blob // 2  # 2 parent clusters, each holding two separable blobs
    divided = divide_clusters(x, labels, parents, seed=0, backend=backend)
    assert sorted(set(divided.tolist())) == [0, 1, 2, 3]
    for parent in range(2):
        inside = parents == parent
        assert set(divided[inside].tolist()) == {2 * parent, 2 * parent + 1}
        assert np.all(divided[~inside] // 2 != parent)
    assert is_acceptable(divided, labels, 4)
    assert _same_partition(divided, blob)


def test_divide_clusters_keeps_dropped_samples_dropped():
    x, labels, blob = _blobs(4, classes_per_blob=4)
    parents = blob // 2
    parents[[0, 45]] = -1
    divided = divide_clusters(x, labels, parents, seed=0)
    assert divided[0] == -1 and divided[45] == -1
    assert np.all(divided[parents >= 0] // 2 == parents[parents >= 0])


def test_divide_clusters_errors():
    x, labels, blob = _blobs(4, classes_per_blob=2)  # 4 usable classes per parent of 2 blobs
    parents = np.where(blob == 3, 1, 0)  # parent 1 holds only 2 usable classes
    with pytest.raises(ClusteringError, match=r"cluster\(s\) \[1\] hold \[2\] classes"):
        divide_clusters(x, labels, parents)
    with pytest.raises(ClusteringError, match=r"cluster\(s\) \[1, 2\] hold \[0, 2\] classes"):
        divide_clusters(x, labels, np.where(blob == 3, 2, 0))  # cluster 1 is empty
    # One class lies far from the other three: 2-means always isolates it, so one half never
    # holds 2 classes.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((15, 4)), 100 + rng.standard_normal((5, 4))])
    labels = np.repeat([0, 1, 2, 3], 5)
    with pytest.raises(ClusteringError, match="no acceptable 2-means split of cluster 0"):
        divide_clusters(x, labels, np.zeros(20, dtype=int), max_tries=2)
