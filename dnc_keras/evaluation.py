"""Retrieval metrics: Recall@K, MAP@R, R-precision and NMI (docs/method.md, section 7).

Numpy in, Python floats out; no TensorFlow. Neighbours are exact: faiss's `IndexFlatL2` (squared
Euclidean distance, the ranking of Euclidean distance; on L2-normalised embeddings also the
ranking of cosine similarity). Queries are searched in chunks of `batch_size`, so memory stays at
O(batch_size x neighbours) and no N x N matrix is ever built.

Definitions, for a query of class c:
- Recall@K: 1 if one of its K nearest neighbours has class c, else 0; averaged over all queries.
  A query whose class has no other item counts as a miss (as in the official codes).
- R: the number of other items of class c among the searchable items.
- R-precision: (items of class c among the first R neighbours) / R.
- MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020):
  (1/R) * sum over ranks i <= R where neighbour i has class c of precision@i. Dividing by R, not by
  the number of hits, is what makes a late hit cost; TPAMI's "mARP" divides by the hits and reads
  higher. MAP@R and R-precision are averaged over queries with R > 0 only (R = 0 defines no
  ranking to score); NaN when no query has R > 0.
- NMI: k-means (`clustering.kmeans`) with as many clusters as classes, from a greedy k-means++
  start as scikit-learn's (at most `NMI_LLOYD_ITERATIONS` Lloyd iterations), then scikit-learn's
  `normalized_mutual_info_score` (arithmetic mean).
K larger than the number of searchable items counts all of them.
"""

import contextlib

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dnc_keras import faiss_devices, progress
from dnc_keras.clustering import kmeans

# Queries per faiss search. With faiss's default database blocks of 1,024 rows its distance
# products were small matrix products, and a 60,000 x 512 evaluation took 2x the time of one
# chunked matrix product; 4,096 queries against blocks of 4,096 rows took 1.1-1.2x
# (docs/performance.md). A block of distances is 4,096 x 4,096 float32: 64 MiB.
DEFAULT_BATCH_SIZE = 4096
_FAISS_DATABASE_BLOCK = 4096
# Deepest neighbour list asked of faiss for Recall@K. Its per-query heap costs more than the
# distances beyond a few dozen neighbours (K = 1000 took 2.3x the time of the matrix product on
# 60,000 x 512, docs/performance.md); a larger K is answered by counting instead, and only for
# the queries that have no class-mate in the list.
_MAX_SEARCH_DEPTH = 32
# Elements of one query-by-gallery block of the counting pass (float32: 64 MiB).
_COUNT_BLOCK = 1 << 24
# Lloyd iterations of NMI's k-means after its greedy k-means++ start. With one cluster per class
# the start decides the result: on SOP-sized data (benchmarks/bench_nmi.py) 44 iterations to
# convergence moved NMI by 0.0002 and took 5x the time of the start.
NMI_LLOYD_ITERATIONS = 5
# First-hit rank of a query with no class-mate found: larger than any K.
_NEVER = np.iinfo(np.int64).max


def _check_embeddings(embeddings, labels, name):
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D]. "
                         f"Received shape: {embeddings.shape}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(f"{name} labels must be 1-D with one entry per row ({len(embeddings)}). "
                         f"Received shape: {labels.shape}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.all(np.isfinite(embeddings)):
        bad = int(np.sum(~np.all(np.isfinite(embeddings), axis=1)))
        raise ValueError(f"{name} must be finite (in float32); {bad} of {len(embeddings)} rows "
                         f"hold NaN or inf")
    return embeddings, labels


def _check_ks(ks):
    ks = tuple(ks)
    if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
                         for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1. Received: ks={ks}")
    return tuple(int(k) for k in ks)


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    return int(batch_size)


def _neighbour_scores(query, query_ids, gallery, gallery_ids, ks, batch_size, leave_one_out):
    """Per-query hits at each K, average precision at R and R-precision, chunk by chunk.

    `query_ids` and `gallery_ids` are integer class ids on a shared scale. With `leave_one_out`
    the query set is the gallery and query i is removed, by index, from its own neighbours.
    """
    class_counts = np.bincount(gallery_ids, minlength=int(query_ids.max()) + 1)
    r = class_counts[query_ids] - (1 if leave_one_out else 0)
    searchable = len(gallery) - (1 if leave_one_out else 0)
    depth = min(max(min(max(ks), _MAX_SEARCH_DEPTH), int(r.max())), searchable)
    index = faiss_devices.flat_l2(gallery.shape[1], max_k=depth)
    index.add(gallery)
    with _faiss_database_block(_FAISS_DATABASE_BLOCK):
        first_hit, average_precision, r_precision = _search_scores(
            index, query, query_ids, gallery_ids, r, depth, batch_size, leave_one_out)
    if max(ks) > depth:
        missed = np.flatnonzero((first_hit == _NEVER) & (r > 0))
        first_hit[missed] = _count_first_hit(query, query_ids, gallery, gallery_ids, missed,
                                              leave_one_out)
    scored = r > 0
    metrics = {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}
    metrics["MAP@R"] = float(np.mean(average_precision[scored])) if scored.any() else float("nan")
    metrics["R-precision"] = float(np.mean(r_precision[scored])) if scored.any() else float("nan")
    return metrics


@contextlib.contextmanager
def _faiss_database_block(rows):
    """Sets faiss's database block of brute-force search (a process-wide setting) for a while."""
    previous = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = rows
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_database_bs = previous


def _search_scores(index, query, query_ids, gallery_ids, r, depth, batch_size, leave_one_out):
    """First-hit rank (`_NEVER` if none among the first `depth`), AP@R and R-precision per
    query, from faiss's `depth` nearest neighbours, chunk by chunk."""
    ranks = np.arange(1, depth + 1)
    first_hit = np.full(len(query), _NEVER, dtype=np.int64)
    average_precision = np.zeros(len(query))
    r_precision = np.zeros(len(query))
    for start in range(0, len(query), batch_size):
        stop = min(start + batch_size, len(query))
        _, neighbours = index.search(query[start:stop], depth + (1 if leave_one_out else 0))
        if leave_one_out:
            # Removing the query by index, not by zero distance, keeps exact duplicates as
            # neighbours. If ties pushed the query out of the list, drop the last neighbour.
            is_self = neighbours == np.arange(start, stop)[:, None]
            is_self[~is_self.any(axis=1), -1] = True
            neighbours = neighbours[~is_self].reshape(stop - start, depth)
        same = gallery_ids[neighbours] == query_ids[start:stop, None]
        first_hit[start:stop] = np.where(same.any(axis=1), same.argmax(axis=1), _NEVER)
        r_chunk = r[start:stop]
        within_r = ranks[None, :] <= r_chunk[:, None]
        relevant = same & within_r
        precision_at_rank = np.cumsum(same, axis=1) / ranks[None, :]
        safe_r = np.maximum(r_chunk, 1)
        average_precision[start:stop] = np.sum(precision_at_rank * relevant, axis=1) / safe_r
        r_precision[start:stop] = np.sum(relevant, axis=1) / safe_r
    return first_hit, average_precision, r_precision


def _count_first_hit(query, query_ids, gallery, gallery_ids, rows, leave_one_out):
    """Rank of the nearest class-mate of each query in `rows`, as the number of items strictly
    closer to the query (itself excluded with `leave_one_out`); ties count in its favour.

    Works in blocks of `_COUNT_BLOCK` scores, so memory stays at O(gallery size).
    """
    # Ranking by |q - g|^2 = |q|^2 - 2 (q.g - |g|^2 / 2) is ranking by the score q.g - |g|^2 / 2,
    # largest first: one matrix product and one subtraction per block.
    half_sq = 0.5 * np.einsum("ij,ij->i", gallery, gallery)
    order = np.argsort(gallery_ids, kind="stable")
    bounds = np.searchsorted(gallery_ids[order], [query_ids[rows], query_ids[rows] + 1])
    step = max(1, _COUNT_BLOCK // len(gallery))
    out = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        scores = query[block] @ gallery.T
        scores -= half_sq
        best = np.empty(len(block), dtype=scores.dtype)
        for i, row in enumerate(block):
            mates = order[bounds[0, start + i]:bounds[1, start + i]]
            if leave_one_out:
                mates = mates[mates != row]
            best[i] = scores[i, mates].max(initial=-np.inf)
        count = np.count_nonzero(scores > best[:, None], axis=1)
        if leave_one_out:
            count -= scores[np.arange(len(block)), block] > best
        out[start:start + step] = count
    return out


def _nmi(embeddings, labels, seed):
    _, class_ids = np.unique(labels, return_inverse=True)
    class_ids = class_ids.reshape(-1)
    clusters = int(class_ids.max()) + 1
    # One opaque call that takes minutes on the large benchmarks: show that it runs.
    with progress.working(f"NMI: k-means, {clusters} clusters on {len(class_ids)} items"):
        predicted = kmeans(embeddings, clusters, seed=seed, n_iter=NMI_LLOYD_ITERATIONS,
                           init="k-means++")
    return float(normalized_mutual_info_score(class_ids, predicted, average_method="arithmetic"))


def retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8), nmi=True, seed=0,
                      batch_size=DEFAULT_BATCH_SIZE):
    """Leave-one-out retrieval over one set: every item queries all the others.

    Args:
        embeddings: float array [N, D], N >= 2 (L2-normalised by the model).
        labels: class labels [N] (any type `np.unique` sorts).
        ks: the K of Recall@K. Defaults to `(1, 2, 4, 8)` (CUB, Cars; SOP uses 1, 10, 100, 1000).
        nmi: also compute NMI (runs k-means with one cluster per class). Defaults to `True`.
        seed: k-means seed for NMI. Defaults to `0`.
        batch_size: queries per faiss search. Defaults to `4096`.

    Returns:
        dict of floats: `"R@k"` per k in `ks`, `"MAP@R"`, `"R-precision"`, and `"NMI"` when `nmi`.
        Definitions in the module docstring.

    Example:
        >>> retrieval_metrics([[0.0], [0.1], [5.0], [5.2]], [0, 0, 1, 1], ks=(1,), nmi=False)
        {'R@1': 1.0, 'MAP@R': 1.0, 'R-precision': 1.0}
    """
    embeddings, labels = _check_embeddings(embeddings, labels, "embeddings")
    if len(embeddings) < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items. "
                         f"Received: {len(embeddings)}")
    ks = _check_ks(ks)
    batch_size = _check_batch_size(batch_size)
    _, ids = np.unique(labels, return_inverse=True)
    ids = ids.reshape(-1)
    metrics = _neighbour_scores(embeddings, ids, embeddings, ids, ks, batch_size,
                                leave_one_out=True)
    if nmi:
        metrics["NMI"] = _nmi(embeddings, labels, seed)
    return metrics


def query_gallery_metrics(query_emb, query_labels, gallery_emb, gallery_labels,
                          ks=(1, 10, 20, 30, 40, 50), nmi=False, seed=0,
                          batch_size=DEFAULT_BATCH_SIZE):
    """Retrieval of separate queries against a gallery (In-shop); nothing is left out.

    R is the number of gallery items of the query's class. NMI, when asked for, clusters the
    queries and the gallery together into as many clusters as distinct labels among both.

    Args:
        query_emb: float array [Q, D].
        query_labels: labels [Q].
        gallery_emb: float array [G, D].
        gallery_labels: labels [G], comparable with `query_labels`.
        ks: the K of Recall@K. Defaults to `(1, 10, 20, 30, 40, 50)` (In-shop).
        nmi: also compute NMI. Defaults to `False`.
        seed: k-means seed for NMI. Defaults to `0`.
        batch_size: queries per faiss search. Defaults to `4096`.

    Returns:
        dict of floats with the keys of `retrieval_metrics`.
    """
    query_emb, query_labels = _check_embeddings(query_emb, query_labels, "query_emb")
    gallery_emb, gallery_labels = _check_embeddings(gallery_emb, gallery_labels, "gallery_emb")
    if query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"query_emb and gallery_emb must have the same width. Received: "
                         f"{query_emb.shape[1]} and {gallery_emb.shape[1]}")
    ks = _check_ks(ks)
    batch_size = _check_batch_size(batch_size)
    all_labels = np.concatenate([query_labels, gallery_labels])
    _, ids = np.unique(all_labels, return_inverse=True)
    ids = ids.reshape(-1)
    metrics = _neighbour_scores(query_emb, ids[:len(query_labels)], gallery_emb,
                                ids[len(query_labels):], ks, batch_size, leave_one_out=False)
    if nmi:
        metrics["NMI"] = _nmi(np.concatenate([query_emb, gallery_emb]), all_labels, seed)
    return metrics


def raw_pixel_baseline(x, labels, ks=(1, 2, 4, 8), nmi=True, seed=0,
                       batch_size=DEFAULT_BATCH_SIZE):
    """`retrieval_metrics` on flattened, L2-normalised pixels: the floor a learned metric must beat.

    Args:
        x: images [N, ...] (any shape after the first axis).
        labels: class labels [N].
        ks, nmi, seed, batch_size: as in `retrieval_metrics`.

    Returns:
        dict of floats, as `retrieval_metrics`.
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty array of images [N, ...]. "
                         f"Received shape: {x.shape}")
    flat = x.reshape(len(x), -1).astype(np.float32)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat /= np.maximum(norms, np.finfo(np.float32).tiny)
    return retrieval_metrics(flat, labels, ks=ks, nmi=nmi, seed=seed, batch_size=batch_size)


def evaluate(embed, evaluations, ks=(1, 2, 4, 8), nmi=True, seed=0):
    """{evaluation name: metrics} of a protocol, embedding with `embed`.

    Args:
        embed: callable images (or sources) -> L2-normalised embeddings [N, D].
        evaluations: objects with `name`, `query`, `query_labels`, `gallery` and
            `gallery_labels` (a gallery of None is leave-one-out on the queries).
        ks, nmi, seed: as `retrieval_metrics`.
    """
    results = {}
    for ev in evaluations:
        query = embed(ev.query)
        if ev.gallery is None:
            results[ev.name] = retrieval_metrics(query, ev.query_labels, ks=ks, nmi=nmi,
                                                 seed=seed)
        else:
            results[ev.name] = query_gallery_metrics(query, ev.query_labels, embed(ev.gallery),
                                                     ev.gallery_labels, ks=ks, nmi=nmi,
                                                     seed=seed)
    return results


def nearest_neighbours(embeddings, k, leave_one_out=True):
    """The k nearest items of every item (Euclidean, exact, faiss), nearest first.

    With `leave_one_out` an item is removed from its own list by index (exact duplicates stay
    neighbours), as the retrieval metrics do.

    Returns:
        int64 array [N, k] of row indices.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(embeddings)
    k = _check_ks([k])[0]
    if not 1 <= k <= n - (1 if leave_one_out else 0):
        raise ValueError(f"k must be between 1 and {n - (1 if leave_one_out else 0)} for "
                         f"{n} items. Received: k={k}")
    depth = k + (1 if leave_one_out else 0)  # leave one out: the item finds itself first
    index = faiss_devices.flat_l2(embeddings.shape[1], max_k=depth)
    index.add(embeddings)
    _, neighbours = index.search(embeddings, depth)
    if not leave_one_out:
        return neighbours.astype(np.int64)
    is_self = neighbours == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return neighbours[~is_self].reshape(n, k).astype(np.int64)


def per_class_recall(embeddings, labels, k=1):
    """Recall@k of each class (leave-one-out): {class: fraction of its items with a class-mate
    among their k nearest}, for finding the classes a model confuses."""
    labels = np.asarray(labels)
    neighbours = nearest_neighbours(embeddings, k)
    hit = (labels[neighbours] == labels[:, None]).any(axis=1)
    return {int(c) if np.issubdtype(labels.dtype, np.integer) else c:
            float(hit[labels == c].mean()) for c in np.unique(labels)}
