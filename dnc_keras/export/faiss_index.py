"""The faiss index behind an `EmbeddingIndex`: flat, IVF or HNSW, with stable int64 ids.

- `flat`: `IndexIDMap2` over `IndexFlatL2`. Exact: every query scans every vector.
- `ivf`: `IndexIVFFlat` over a flat quantizer, k-means with `nlist` centroids trained on the
  gallery (faiss samples at most 256 points per centroid). A query scans the vectors of its
  `nprobe` nearest lists; the ids are the index's own (`add_with_ids`).
- `hnsw`: `IndexIDMap2` over `IndexHNSWFlat`, a graph of `M` links per node built with a beam of
  `efConstruction`. A query walks it with a beam of `efSearch`.

Flat and IVF delete in place. HNSW cannot delete from its graph: removed ids are hidden at
search by a faiss `IDSelector`, and `rebuild` makes a new graph from the stored vectors (no
re-embedding). `build_tuned` sets the smallest `nprobe` / `efSearch` whose recall@10 against
exact search reaches a target on gallery vectors held out while it tunes. Flat and HNSW
indexes hold the arrays a search reads in huge pages on Linux (`back_with_huge_pages`).
"""

import ctypes
import errno
import math
import sys

import numpy as np

from dnc_keras_cli.options import HNSW_DEFAULTS

KINDS = ("flat", "ivf", "hnsw")
# faiss.index_factory strings; every kind keeps caller-given int64 ids.
FACTORY = {"flat": "IDMap2,Flat", "ivf": "IVF{nlist},Flat", "hnsw": "IDMap2,HNSW{M},Flat"}
# The parameter each kind takes at search, and the values `tune` tries, cheapest first.
SEARCH_PARAMETER = {"ivf": "nprobe", "hnsw": "efSearch"}
TUNE_VALUES = {"ivf": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024),
               "hnsw": (16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 80, 96, 128, 192, 256, 384,
                        512, 1024)}
PARAMETERS = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("M", "efConstruction", "efSearch")}
# faiss's k-means warns below 39 training points per centroid; nlist stays under n / 50 so
# it has them even while `build_tuned` holds a fifth of the gallery out.
MIN_POINTS_PER_LIST = 50
TUNE_K = 10
TUNE_SAMPLE = 1000
MIN_TUNE_SAMPLE = 50
# Beyond this fraction of its lists scanned per query, IVF searched no faster than the flat
# index in the nprobe sweep of benchmarks/bench_index.py at 1,000,000 items (IVF scans list by
# list; flat computes its distances as one matrix product).
IVF_USEFUL_SCAN = 0.04
# madvise(2) advice (linux/mman.h) and the size of a transparent huge page on x86-64 (and on
# arm64 with 4 KiB base pages).
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE_PAGE = 2 << 20
# MADV_COLLAPSE fails with EAGAIN when the kernel found no free huge page at that moment.
COLLAPSE_ATTEMPTS = 3


def default_parameters(kind, n):
    """The build parameters of `kind` for a gallery of `n` vectors.

    IVF: nlist = 4 sqrt(n) (the low end of faiss's guideline of 4-16 sqrt(n): more items per
    list, faster to build), at most n / 50 (see MIN_POINTS_PER_LIST). HNSW: M = 32
    links per node (faiss's guidelines span 4-64: more links, more memory and recall),
    efConstruction = 200 (`dnc_keras_cli.options.HNSW_DEFAULTS`). The search parameter (nprobe,
    efSearch) is left to `tune`.
    """
    check_kind(kind)
    if kind == "ivf":
        return {"nlist": int(max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST)))}
    if kind == "hnsw":
        return dict(HNSW_DEFAULTS)
    return {}


def slow_ivf_advice(kind, parameters):
    """A one-line advice where an IVF index scans so many of its lists per query (nprobe /
    nlist above IVF_USEFUL_SCAN) that exact search would be as fast; else None."""
    if kind != "ivf" or "nprobe" not in parameters:
        return None
    scanned = parameters["nprobe"] / parameters["nlist"]
    if scanned <= IVF_USEFUL_SCAN:
        return None
    return (f"IVF scans {scanned:.0%} of its lists per query (nprobe {parameters['nprobe']} of "
            f"{parameters['nlist']}): beyond {IVF_USEFUL_SCAN:.0%} it searched no faster than "
            "flat in benchmarks/bench_index.py; on this gallery prefer --index hnsw (or flat)")


def check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}. Received: {kind!r}")


def check_parameters(kind, parameters, n):
    """Raises ValueError naming a parameter `kind` does not take or a value out of range."""
    for name, value in parameters.items():
        if name not in PARAMETERS[kind]:
            allowed = ", ".join(PARAMETERS[kind]) or "none"
            raise ValueError(f"a {kind} index takes the parameters: {allowed}. Received: "
                             f"{name}={value}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    if kind == "ivf" and parameters.get("nlist", 1) > n:
        raise ValueError(f"nlist must be at most the number of vectors to train on ({n}). "
                         f"Received: nlist={parameters['nlist']}")
    if kind == "ivf" and parameters.get("nprobe", 1) > parameters.get("nlist", math.inf):
        raise ValueError(f"nprobe must be at most nlist ({parameters['nlist']}). Received: "
                         f"nprobe={parameters['nprobe']}")


def build(kind, vectors, ids, parameters):
    """A trained faiss index of `kind` holding `vectors` under `ids`.

    Args:
        kind: `"flat"`, `"ivf"` or `"hnsw"`.
        vectors: float32 [n, d].
        ids: int64 [n], the ids searches return.
        parameters: the build parameters (`default_parameters`) and, optionally, the search
            parameter.
    """
    import faiss

    index = faiss.index_factory(vectors.shape[1], FACTORY[kind].format(**parameters),
                                faiss.METRIC_L2)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = parameters["efConstruction"]
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, ids)
    set_search_parameter(index, kind, parameters)
    return index


def back_with_huge_pages(index, kind):
    """Asks Linux to hold the arrays a search reads at random in 2 MiB pages; returns the MiB
    it moved into them (0 where it could not).

    A flat index's vectors, an HNSW graph's vectors and links: an HNSW search hops between
    a few thousand vectors scattered over hundreds of MiB, and with 4 KiB pages nearly every
    hop also misses the TLB. `madvise(MADV_HUGEPAGE)` keeps the range eligible for huge pages
    and `MADV_COLLAPSE` (Linux 6.1+) moves it into them now, whatever the system's
    transparent-huge-page default ("madvise" on most distributions). Same bytes, same results;
    benchmarks/bench_index.py times each index against a copy on 4 KiB pages. IVF's lists are
    separate small arrays and are left alone. Call it again after adding vectors (a growing
    array moves). Elsewhere than Linux, or where the kernel refuses, nothing changes.
    """
    import faiss

    if not sys.platform.startswith("linux") or kind == "ivf":
        return 0
    inner = faiss.downcast_index(index.index)
    arrays = [faiss.downcast_index(inner.storage).codes, inner.hnsw.neighbors] \
        if kind == "hnsw" else [inner.codes]
    return sum(_collapse(int(array.data()), array.byte_size()) for array in arrays) >> 20


def _collapse(address, nbytes):
    """Bytes of [address, address + nbytes) moved into huge pages (whole huge pages only)."""
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    if end <= start:
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if madvise(start, end - start, MADV_HUGEPAGE):
        return 0
    for _ in range(COLLAPSE_ATTEMPTS):
        if madvise(start, end - start, MADV_COLLAPSE) == 0:
            return end - start
        if ctypes.get_errno() != errno.EAGAIN:  # EINVAL: a kernel before 6.1, or THP off
            return 0
    return 0


def set_search_parameter(index, kind, parameters):
    """Sets nprobe (IVF) or efSearch (HNSW) from `parameters`, where given."""
    import faiss

    name = SEARCH_PARAMETER.get(kind)
    if name and parameters.get(name):
        faiss.ParameterSpace().set_index_parameter(index, name, int(parameters[name]))


def search(index, queries, k, hidden=()):
    """(squared L2 distances, ids) [n, k] of the k nearest stored vectors not in `hidden`;
    id -1 where fewer than k were found."""
    import faiss

    if len(hidden) == 0:
        return index.search(queries, k)
    batch = faiss.IDSelectorBatch(np.asarray(hidden, dtype=np.int64))
    selector = faiss.IDSelectorNot(batch)
    return index.search(queries, k, params=faiss.SearchParameters(sel=selector))


def remove(index, kind, ids):
    """Deletes `ids` in place (flat, IVF); returns False for HNSW, which cannot delete."""
    if kind == "hnsw":
        return False
    removed = index.remove_ids(np.asarray(ids, dtype=np.int64))
    if removed != len(ids):
        raise RuntimeError(f"faiss removed {removed} of {len(ids)} ids")
    return True


def stored_ids(index, kind):
    """int64 array of every id the faiss index holds (hidden HNSW ids included)."""
    import faiss

    if kind != "ivf":
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(lists.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def stored_vectors(index, kind):
    """(ids, float32 vectors) of everything a flat or HNSW index stores, in storage order."""
    import faiss

    if kind == "ivf":
        raise ValueError("stored_vectors reads flat and hnsw indexes only")
    inner = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(inner.storage) if kind == "hnsw" else inner
    return stored_ids(index, kind), storage.reconstruct_n(0, storage.ntotal)


def rebuild(index, kind, parameters, hidden):
    """A new index of the same kind and parameters without the `hidden` ids (HNSW's delete),
    in huge pages."""
    ids, vectors = stored_vectors(index, kind)
    keep = ~np.isin(ids, np.asarray(hidden, dtype=np.int64))
    index = build(kind, np.ascontiguousarray(vectors[keep]), ids[keep], parameters)
    back_with_huge_pages(index, kind)
    return index


def recall_at(found, truth, k):
    """Mean fraction of each row's `k` true neighbour ids that `found` holds (-1 never counts).

    `found`, `truth`: int64 [n, >= k] id arrays; only the first k of each are compared.
    """
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def build_tuned(kind, vectors, ids, parameters, target_recall, k=TUNE_K, sample=TUNE_SAMPLE,
                seed=0):
    """`build`, and for IVF and HNSW without their search parameter in `parameters`, set it
    to the smallest value whose recall@k against exact search reaches `target_recall`.

    The tuning queries are `sample` gallery vectors held out of the index while it is tuned
    and added after: held-out queries, as real ones are. (A stored vector used as a query
    sits in its own IVF list and HNSW neighbourhood, which flatters recall.) The sample is at
    most a fifth of the gallery; below 250 vectors the search is made exhaustive instead. If
    no value reaches the target, the largest tried is kept and `reached` is False. The index
    is handed over with its searched arrays in huge pages (`back_with_huge_pages`).

    Returns:
        (faiss index, tuning record or None): `parameter`, `value`, `recall_at_10`, `target`,
        `sample`, `reached`.
    """
    index, record = _build_and_tune(kind, vectors, ids, parameters, target_recall, k, sample,
                                    seed)
    back_with_huge_pages(index, kind)  # once, on the arrays as they are handed over
    return index, record


def _build_and_tune(kind, vectors, ids, parameters, target_recall, k, sample, seed):
    name = SEARCH_PARAMETER.get(kind)
    if name is None or name in parameters:
        return build(kind, vectors, ids, parameters), None
    sample = min(sample, len(vectors) // 5)
    if sample < MIN_TUNE_SAMPLE:
        # Too few items to measure recall on; searching them all costs nothing.
        value = parameters["nlist"] if kind == "ivf" else max(TUNE_VALUES["hnsw"])
        index = build(kind, vectors, ids, {**parameters, name: value})
        return index, {"parameter": name, "value": value, f"recall_at_{TUNE_K}": None,
                       "target": target_recall, "sample": 0, "reached": None,
                       "note": f"fewer than {5 * MIN_TUNE_SAMPLE} vectors: not tuned, "
                               "exhaustive search"}
    rng = np.random.default_rng(seed)
    held = np.zeros(len(vectors), bool)
    held[rng.choice(len(vectors), sample, replace=False)] = True
    rest, rest_ids = np.ascontiguousarray(vectors[~held]), ids[~held]
    queries = np.ascontiguousarray(vectors[held])
    index = build(kind, rest, rest_ids, parameters)
    value, recall = tune(index, kind, queries, rest, rest_ids, target_recall, k)
    index.add_with_ids(queries, ids[held])
    return index, {"parameter": name, "value": value, f"recall_at_{TUNE_K}": round(recall, 4),
                   "target": target_recall, "sample": sample,
                   "reached": bool(recall >= target_recall)}


def tune(index, kind, queries, vectors, ids, target_recall, k=TUNE_K):
    """Sets the smallest nprobe / efSearch whose recall@k on `queries` against exact search of
    `vectors` (stored in `index` under `ids`) reaches `target_recall`, or the largest tried;
    returns (value, recall)."""
    import faiss

    name = SEARCH_PARAMETER[kind]
    k = min(k, len(vectors))
    truth = ids[faiss.knn(queries, vectors, k)[1]]
    limit = index.nlist if kind == "ivf" else math.inf
    values = [v for v in TUNE_VALUES[kind] if v < limit]
    if kind == "ivf":
        values.append(int(limit))
    for value in values:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
        recall = recall_at(index.search(queries, k)[1], truth, k)
        if recall >= target_recall:
            break
    return int(value), recall


def index_bytes(index):
    """Bytes of the serialized faiss index (what `write_index` puts on disk)."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)
