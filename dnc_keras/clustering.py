"""Divide step: k-means on training features, the acceptance rule, matching and division.

Numpy in, numpy out; no TensorFlow. The caller (`callbacks.py`) embeds the training set and passes
L2-normalised features here; `sampling.py` reads the assignment back. Method: docs/method.md,
section 2. An assignment is an int array of cluster ids, one per training image; -1 marks an image
dropped from its cluster until the next re-clustering.
"""

import math
import operator

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from dnc_keras import faiss_devices

BACKENDS = ("auto", "faiss", "sklearn")
INITS = (None, "k-means++")

# Thresholds of the "auto" rule. Measured with faiss-cpu 1.15.1 and scikit-learn 1.9.1 on 2 shared
# CPU cores, 100 iterations at most (median of 3 runs; random unit vectors / separable blobs):
#   60000 x 128,  K=2:   faiss 0.49 / 0.77 s, sklearn 0.18 / 0.19 s
#   60000 x 128,  K=8:   faiss 0.82 / 0.76 s, sklearn 0.59 / 0.36 s
#   60000 x 128,  K=16:  faiss 1.50 / 0.38 s, sklearn 0.91 / 0.54 s
#   60000 x 128,  K=32:  faiss 1.09 / 0.19 s, sklearn 1.49 / 0.92 s
#   20000 x 128,  K=64:  faiss 0.21 / 0.22 s, sklearn 0.57 / 0.46 s
#   20000 x 128,  K=512: faiss 0.45 / 0.25 s, sklearn 4.48 / 2.50 s
#   20000 x 512,  K=8:   faiss 0.89 / 0.13 s, sklearn 0.73 / 0.34 s
#   20000 x 2048, K=8:   faiss 1.16 / 0.38 s, sklearn 1.89 / 1.03 s
# sklearn's Lloyd wins for the few clusters that DnC uses on 128-d vectors (and every 2-means
# split); faiss wins from about 32 clusters (NMI on many test classes) and on wide backbone
# features.
# Re-measured by benchmarks/bench_recluster.py (docs/performance.md; medians of 5, interleaved,
# SOP-like data of N/5 classes; faiss at its 100 iterations, sklearn until converged):
#   10000 x 128, K=8/16: faiss 0.103/0.066 s, sklearn 0.106/0.144
#   10000 x 512, K=8/16: faiss 0.275/0.287 s, sklearn 0.229/0.321
#   60000 x 128, K=8/16: faiss 0.865/1.16 s,  sklearn 0.565/0.789
#   60000 x 512, K=8/16: faiss 4.62/2.05 s,   sklearn 2.44/3.22
# so faiss also wins from 16 clusters on 512-d vectors, and on up to 10,000 points.
_FAISS_MIN_CLUSTERS = 32
_FAISS_MIN_DIM = 1024
_FAISS_MIN_CLUSTERS_WIDE_OR_SMALL = 16  # for dim >= 512, or num_samples <= _SMALL
_SMALL = 10_000
# "auto" on many rows: k-means is fitted on a seeded random sample of max(256 K, 4,096) rows (256
# per centroid is faiss's own default), then every row is assigned to its nearest centre; the
# backend is chosen by the rule above for the sample's size. At 60,000 x 512 and K = 32 it took
# 0.21 s against 4.05 s for faiss on every row; over all rows its k-means objective is 0.03-0.44%
# above the full fit's (two seeds of the full fit: within 0.05%) in benchmarks/bench_recluster.py.
# Up to 4,096 rows (Omniglot's and the glyphs' training sets) every row is used, as before.
_SAMPLE_PER_CLUSTER = 256
_MIN_SAMPLE = 4096

# Greedy k-means++ (`greedy_kmeans_plus_plus`): rows whose potential a new centre lowers.
SEEDING_NEIGHBOURS = 64


class ClusteringError(ValueError):
    """No acceptable clustering: a cluster would lack 2 classes with at least 2 images each."""


def auto_route(num_samples, dim, num_clusters):
    """(backend, rows fitted) of the "auto" k-means: at most max(256 K, 4,096) rows, and the
    backend the rule below picks for that many (faiss whenever faiss reports a GPU)."""
    rows = min(num_samples, max(_SAMPLE_PER_CLUSTER * num_clusters, _MIN_SAMPLE))
    # With a GPU, faiss's k-means wins at every size; the CPU rule is measured above.
    backend = "faiss" if faiss_devices.num_gpus() else _choose_backend(dim, num_clusters, rows)
    return backend, rows


def _choose_backend(dim, num_clusters, num_samples=None):
    """The "auto" rule of `kmeans` (see the measurements above)."""
    if num_clusters >= _FAISS_MIN_CLUSTERS or dim >= _FAISS_MIN_DIM:
        return "faiss"
    small = num_samples is not None and num_samples <= _SMALL
    if num_clusters >= _FAISS_MIN_CLUSTERS_WIDE_OR_SMALL and (dim >= 512 or small):
        return "faiss"
    return "sklearn"


def _as_int(value, name, minimum):
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer. Received: {name}={value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value}")
    return value


def _check_features(x):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty 2-D array [N, D]. Received shape: {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise ValueError(f"x must be finite (in float32); {bad} of {len(x)} rows hold NaN or inf")
    return x


def _check_labels(labels, num_samples):
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_samples:
        raise ValueError(f"labels must be 1-D with one entry per sample ({num_samples}). "
                         f"Received shape: {labels.shape}")
    return labels


def _check_assignment(assignment, num_samples, name="assignment", num_clusters=None):
    assignment = np.asarray(assignment)
    if assignment.ndim != 1 or len(assignment) != num_samples:
        raise ValueError(f"{name} must be 1-D with one entry per sample ({num_samples}). "
                         f"Received shape: {assignment.shape}")
    if len(assignment) and not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cluster ids. Received dtype: "
                         f"{assignment.dtype}")
    assignment = assignment.astype(np.int64)
    if len(assignment) and assignment.min() < -1:
        raise ValueError(f"{name} must hold cluster ids >= 0, or -1 for a dropped sample. "
                         f"Received: {assignment.min()}")
    if num_clusters is not None and len(assignment) and assignment.max() >= num_clusters:
        raise ValueError(f"{name} holds cluster id {assignment.max()}, outside "
                         f"[0, num_clusters={num_clusters})")
    return assignment


def kmeans(x, num_clusters, seed=0, n_iter=100, backend="auto", max_points_per_centroid=None,
           init=None):
    """Lloyd's k-means; returns the cluster id of every row of `x`.

    Both backends start from their own seeded initialisation (faiss: random rows; scikit-learn:
    greedy k-means++) unless `init` says otherwise, run once (no restarts) and stop early when
    converged, so `n_iter` is a maximum.

    Args:
        x: float array [N, D], finite.
        num_clusters: K, between 1 and N. K=1 returns zeros without running k-means.
        seed: random seed of the initialisation. Defaults to `0`.
        n_iter: maximum number of Lloyd iterations. Defaults to `100` (both official codes).
        backend: `"faiss"` (`faiss.Kmeans`, on every GPU faiss reports, else the CPU),
            `"sklearn"`
            (`KMeans(n_init=1, algorithm="lloyd")`) or `"auto"`: faiss when K >= 32, D >= 1024,
            or K >= 16 with D >= 512 or N <= 10,000, or whenever faiss reports a GPU; else
            scikit-learn, from timings on this project's CPUs (see `_FAISS_MIN_CLUSTERS` in the
            source), fitted on a seeded random sample of max(256 K, 4,096) rows where there are
            more, every row then assigned to its nearest centre (`auto_route`). Defaults
            to `"auto"`.
        max_points_per_centroid: faiss only: train on a random subsample of at most this many
            rows per cluster, then assign every row. Defaults to `None`: no subsampling (faiss's
            own default, 256, would silently subsample 60,000 rows to 2,048 for K=8).
        init: `None` (each backend's own start) or `"k-means++"`: greedy k-means++ on both
            (faiss starts from `greedy_kmeans_plus_plus`), which many small clusters need
            (NMI). Defaults to `None`.

    Returns:
        int64 array [N] with values in [0, K).
    """
    x = _check_features(x)
    n, dim = x.shape
    num_clusters = _as_int(num_clusters, "num_clusters", 1)
    if num_clusters > n:
        raise ValueError(f"num_clusters must be <= the number of samples ({n}). "
                         f"Received: num_clusters={num_clusters}")
    n_iter = _as_int(n_iter, "n_iter", 1)
    seed = _as_int(seed, "seed", 0)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}. Received: backend={backend!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}. Received: init={init!r}")
    if num_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    train = x
    if backend == "auto":
        backend, rows = auto_route(n, dim, num_clusters)
        if rows < n:  # fit on a seeded sample, then assign every row
            train = x[np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))]
    if backend == "faiss":
        if max_points_per_centroid is None:
            max_points_per_centroid = len(train)
        # min_points_per_centroid=1 silences faiss's warning for small splits; it changes nothing.
        km = faiss.Kmeans(dim, num_clusters, niter=n_iter, seed=seed, verbose=False,
                          max_points_per_centroid=int(max_points_per_centroid),
                          min_points_per_centroid=1, **faiss_devices.kmeans_device_options())
        start = None
        if init == "k-means++":
            start = train[greedy_kmeans_plus_plus(train, num_clusters, seed=seed)]
        km.train(train, init_centroids=start)
        _, assignment = km.index.search(x, 1)
        return assignment[:, 0].astype(np.int64)
    if max_points_per_centroid is not None:
        raise ValueError("max_points_per_centroid applies to the faiss backend only. Received: "
                         f"backend='sklearn', max_points_per_centroid={max_points_per_centroid}")
    km = KMeans(num_clusters, n_init=1, max_iter=n_iter, random_state=seed, algorithm="lloyd")
    labels = km.fit_predict(train)
    return (labels if train is x else km.predict(x)).astype(np.int64)


def greedy_kmeans_plus_plus(x, num_clusters, seed=0, neighbours=SEEDING_NEIGHBOURS, trials=None):
    """Row indices of `num_clusters` starting centres chosen by greedy k-means++.

    Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's start): each step draws
    `trials` candidate rows with probability proportional to their potential (squared distance
    to the nearest centre) and keeps the one that lowers the total potential most. It is what
    NMI needs at the size of SOP's test set (60,502 rows in 11,316 clusters of about 5): there
    the start decides the clustering and Lloyd's iterations barely move it. faiss's random rows
    leave many classes without a centre (NMI 0.05 below scikit-learn's, benchmarks/bench_nmi.py),
    and scikit-learn's own greedy start measures every candidate against every row, about 15
    minutes at that size.

    One approximation makes it one k-nearest-neighbour search (faiss, O(N^2 D)) plus K cheap
    steps: a centre lowers the potential of its `neighbours` nearest rows only, and farther rows
    keep their older, larger potential. With classes of a few rows, the rows a centre takes over
    are among its nearest. With `neighbours` >= N the rule is exact.

    Args:
        x: float32 array [N, D], finite (as `kmeans` checks it).
        num_clusters: K, between 1 and N.
        seed: seed of the draws. Defaults to `0`.
        neighbours: rows whose potential a centre lowers (itself included). Defaults to `64`;
            at least N makes the rule exact. The neighbour search costs O(N^2 D).
        trials: candidates per step. Defaults to `None`: 2 + ln K (scikit-learn's choice).

    Returns:
        int64 array [K] of distinct row indices where the rows are distinct.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    num_clusters = _as_int(num_clusters, "num_clusters", 1)
    if num_clusters > n:
        raise ValueError(f"num_clusters must be <= the number of rows ({n}). "
                         f"Received: num_clusters={num_clusters}")
    neighbours = min(_as_int(neighbours, "neighbours", 1), n)
    trials = 2 + int(math.log(num_clusters)) if trials is None else _as_int(trials, "trials", 1)
    rng = np.random.default_rng(seed)
    distances, rows = faiss.knn(x, x, neighbours)
    distances = np.maximum(distances, 0.0).astype(np.float64)
    chosen = [int(rng.integers(n))]
    potential = faiss.knn(x, x[chosen], 1)[0][:, 0].astype(np.float64)
    for _ in range(1, num_clusters):
        cumulative = np.cumsum(potential)
        if cumulative[-1] <= 0:  # every row sits on a centre: any row will do
            candidates = rng.integers(n, size=trials)
        else:
            draws = rng.uniform(size=trials) * cumulative[-1]
            # side="right": a draw lands on a row of positive potential, never on a centre.
            candidates = np.minimum(np.searchsorted(cumulative, draws, side="right"), n - 1)
        gains = np.maximum(potential[rows[candidates]] - distances[candidates], 0.0).sum(axis=1)
        best = int(candidates[np.argmax(gains)])
        chosen.append(best)
        near = rows[best]
        potential[near] = np.minimum(potential[near], distances[best])
        potential[best] = 0.0  # also where more than `neighbours` rows duplicate it
    return np.asarray(chosen, dtype=np.int64)

def _usable_classes_per_cluster(assignment, labels, num_clusters):
    """Per cluster, the number of classes with at least 2 images in it (-1 entries ignored)."""
    keep = assignment >= 0
    _, class_ids = np.unique(labels, return_inverse=True)
    num_classes = int(class_ids.max()) + 1 if len(class_ids) else 1
    pairs = assignment[keep] * num_classes + class_ids.reshape(-1)[keep]
    pair_ids, counts = np.unique(pairs, return_counts=True)
    return np.bincount(pair_ids[counts >= 2] // num_classes, minlength=num_clusters)


def _num_usable(labels):
    """Number of classes with at least 2 images."""
    _, counts = np.unique(np.asarray(labels).reshape(-1), return_counts=True)
    return int(np.sum(counts >= 2))


def max_learners(labels):
    """How many learners the training classes support: (classes with >= 2 images) // 2.

    Each cluster needs 2 classes with at least 2 images, and k-means nearly always keeps a class
    in one cluster, so this is the limit to check a configuration against, early and with a clear
    message. (A class split over several clusters can serve each of them, so `cluster` itself only
    refuses what no assignment could satisfy.)
    """
    return _num_usable(labels) // 2


def _max_feasible_clusters(labels):
    """The largest K for which some assignment passes `is_acceptable`.

    A class of n images can serve at most n // 2 clusters and each cluster takes 2 distinct
    classes, so K clusters are feasible iff sum_c min(n_c // 2, K) >= 2K.
    """
    _, counts = np.unique(np.asarray(labels).reshape(-1), return_counts=True)
    halves = np.sort(counts // 2)
    candidates = np.arange(1, int(halves.sum()) // 2 + 1)
    below = np.searchsorted(halves, candidates)  # classes with n_c // 2 < K
    capacity = np.concatenate([[0], np.cumsum(halves)])[below] + candidates * (len(halves) - below)
    feasible = candidates[capacity >= 2 * candidates]
    return int(feasible.max()) if feasible.size else 0


def is_acceptable(assignment, labels, num_clusters):
    """Whether every cluster 0..K-1 holds at least 2 classes with at least 2 images each.

    The rule of both official codes: a learner needs positives and negatives in its batches. An
    empty cluster fails; samples with id -1 are ignored.
    """
    labels = np.asarray(labels).reshape(-1)
    num_clusters = _as_int(num_clusters, "num_clusters", 1)
    assignment = _check_assignment(assignment, len(labels), num_clusters=num_clusters)
    return bool(np.all(_usable_classes_per_cluster(assignment, labels, num_clusters) >= 2))


def cluster(x, labels, num_clusters, seed=0, max_tries=30, backend="auto"):
    """k-means into `num_clusters` clusters that pass `is_acceptable`, retrying with new seeds.

    Tries seeds `seed, seed + 1, ..., seed + max_tries - 1` and returns the first acceptable
    clustering. K=1 returns all zeros without k-means (still checked against the rule).

    Args:
        x: L2-normalised features [N, D] (normalised by the caller).
        labels: class labels [N].
        num_clusters: K >= 1.
        seed: first seed. Defaults to `0`.
        max_tries: number of seeds to try. Defaults to `30` (both official codes).
        backend: see `kmeans`. Defaults to `"auto"`.

    Returns:
        int64 assignment [N] with values in [0, K).

    Raises:
        ClusteringError: no assignment of these labels into K clusters could be acceptable
            (checked before any k-means), or no try was acceptable.
    """
    x = _check_features(x)
    labels = _check_labels(labels, len(x))
    num_clusters = _as_int(num_clusters, "num_clusters", 1)
    max_tries = _as_int(max_tries, "max_tries", 1)
    limit = _max_feasible_clusters(labels)
    if num_clusters > limit:
        raise ClusteringError(
            f"num_clusters must be <= {limit}: each cluster needs 2 classes with at least 2 "
            f"images, and {_num_usable(labels)} of the {len(np.unique(labels))} classes have 2 "
            f"images or more. Received: num_clusters={num_clusters}")
    if num_clusters == 1:
        return np.zeros(len(x), dtype=np.int64)
    for trial in range(max_tries):
        assignment = kmeans(x, num_clusters, seed=seed + trial, backend=backend)
        if is_acceptable(assignment, labels, num_clusters):
            return assignment
    raise ClusteringError(
        f"no acceptable clustering into num_clusters={num_clusters} after {max_tries} tries "
        f"(seeds {seed}..{seed + max_tries - 1}): some cluster always had fewer than 2 classes "
        f"with 2 images; {_num_usable(labels)} classes have 2 images or more. Use fewer clusters.")


def match_clusters(new_assignment, old_assignment, num_clusters):
    """Renames the new clusters after the old ones they overlap most, so learners keep their data.

    cost[i, j] = |new cluster i symmetric-difference old cluster j| (as sets of sample indices,
    samples with id -1 belonging to no cluster); scipy's `linear_sum_assignment` picks the
    permutation of least total cost and new cluster i takes the old id it is matched to. (Both
    official codes index the permutation the other way round, which is only right when it is its
    own inverse, as a swap is.)

    Args:
        new_assignment: int array [N], ids in [0, K) or -1.
        old_assignment: int array [N], ids in [0, K) or -1.
        num_clusters: K, the same for both.

    Returns:
        int64 array [N]: `new_assignment` with renamed ids; -1 entries stay -1.
    """
    num_clusters = _as_int(num_clusters, "num_clusters", 1)
    new = _check_assignment(new_assignment, len(np.asarray(new_assignment).reshape(-1)),
                            "new_assignment", num_clusters)
    old = _check_assignment(old_assignment, len(new), "old_assignment", num_clusters)
    new_sizes = np.bincount(new[new >= 0], minlength=num_clusters)
    old_sizes = np.bincount(old[old >= 0], minlength=num_clusters)
    both = (new >= 0) & (old >= 0)
    overlap = np.bincount(new[both] * num_clusters + old[both],
                          minlength=num_clusters * num_clusters).reshape(num_clusters,
                                                                         num_clusters)
    cost = new_sizes[:, None] + old_sizes[None, :] - 2 * overlap
    rows, cols = linear_sum_assignment(cost)
    new_to_old = np.empty(num_clusters, dtype=np.int64)
    new_to_old[rows] = cols
    return np.where(new >= 0, new_to_old[np.maximum(new, 0)], -1)


def drop_single_image_classes(assignment, labels):
    """Sets to -1 every image whose class has no other image in its cluster.

    Such an image can be neither an anchor with a positive nor a useful positive; it rejoins a
    cluster at the next re-clustering. Returns a new array; entries already -1 stay -1.
    """
    labels = np.asarray(labels).reshape(-1)
    assignment = _check_assignment(assignment, len(labels))
    _, class_ids = np.unique(labels, return_inverse=True)
    class_ids = class_ids.reshape(-1)
    num_classes = int(class_ids.max()) + 1 if len(class_ids) else 1
    keep = assignment >= 0
    pairs = np.where(keep, assignment * num_classes + class_ids, -1)
    _, pair_index, counts = np.unique(pairs, return_inverse=True, return_counts=True)
    single = (counts[pair_index.reshape(-1)] == 1) & keep
    return np.where(single, -1, assignment)


def divide_clusters(x, labels, assignment, seed=0, max_tries=30, backend="auto"):
    """Progressive division (TPAMI): splits every cluster c in two by 2-means into 2c and 2c+1.

    Each split must leave both halves with 2 classes of at least 2 images (the rule of
    `is_acceptable`); a split that does not is retried with the next seed, as in `cluster`.

    Args:
        x: L2-normalised features [N, D] (normalised by the caller).
        labels: class labels [N].
        assignment: current assignment [N] with ids 0..K-1, every cluster non-empty. Pass it
            before `drop_single_image_classes`: samples with id -1 stay -1.
        seed: first seed of every split. Defaults to `0`.
        max_tries: seeds to try per cluster. Defaults to `30`.
        backend: see `kmeans`. Defaults to `"auto"`.

    Returns:
        int64 assignment [N] with 2K clusters; children 2c and 2c+1 partition parent c.

    Raises:
        ClusteringError: a cluster has fewer than 4 classes with 2 images (no acceptable split
            exists), or none of the tries split it acceptably. There is no fallback: keep K
            (skip the division) or use fewer final learners.
    """
    x = _check_features(x)
    labels = _check_labels(labels, len(x))
    assignment = _check_assignment(assignment, len(x))
    max_tries = _as_int(max_tries, "max_tries", 1)
    seed = _as_int(seed, "seed", 0)
    if not np.any(assignment >= 0):
        raise ValueError("assignment must hold at least one cluster id >= 0; all are -1")
    num_clusters = int(assignment.max()) + 1
    usable = _usable_classes_per_cluster(assignment, labels, num_clusters)
    small = np.flatnonzero(usable < 4)
    if small.size:
        raise ClusteringError(
            f"cannot divide {num_clusters} clusters into {2 * num_clusters}: cluster(s) "
            f"{small.tolist()} hold {usable[small].tolist()} classes with at least 2 images, and "
            f"each half needs 2 (so 4 per cluster)")
    divided = np.full(len(x), -1, dtype=np.int64)
    for parent in range(num_clusters):
        members = np.flatnonzero(assignment == parent)
        for trial in range(max_tries):
            halves = kmeans(x[members], 2, seed=seed + trial, backend=backend)
            if is_acceptable(halves, labels[members], 2):
                break
        else:
            raise ClusteringError(
                f"no acceptable 2-means split of cluster {parent} ({len(members)} images, "
                f"{usable[parent]} classes with 2 images or more) after {max_tries} tries "
                f"(seeds {seed}..{seed + max_tries - 1})")
        divided[members] = 2 * parent + halves
    return divided
