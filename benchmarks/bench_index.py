"""Approximate search (IVF, HNSW) against exact search (flat) at a product catalogue's size.

    nice python benchmarks/bench_index.py              # 1,000,000 x 128, 1.5 hours on 1 thread
    python benchmarks/bench_index.py --tiny            # 10,000 x 128, seconds

Target (issue 15): recall@10 >= 0.95 against exact search at >= 10x the flat index's queries
per second.

Data: `--n` gallery embeddings and `--queries` held-out queries, 128-d, L2-normalised, drawn
from a mixture of `--classes` Gaussian classes: each class centre is a random unit vector, and
an embedding is its class centre plus isotropic Gaussian noise of standard deviation
`--spread` per dimension, then L2-normalised. The default spread 0.12 gives noise of norm
about 1.36 (0.12 sqrt(128)) against the centre's 1: a query's nearest neighbour is almost
always of its class, but at a million items many of its 10 nearest are items of other classes
scattered over the sphere, which approximate search finds only by looking far (the results
record both: `nearest_neighbour_same_class`, `exact_top10_same_class`). At 0.10 a class is a
tight cluster holding most of its members' 10 nearest; at 0.15 classes barely show and the
data is close to uniform on the sphere, where no index does much better than a scan. Each
operating point also records `top1_same_class`: how often the first item found has the
query's class, what a user of the labels sees.

Each index is what `dnc-keras build-index --index KIND` builds (`dnc_keras.export.faiss_index`:
the same default parameters and the same tuning of nprobe / efSearch to recall@10 >= 0.95 on
1,000 gallery items); flat's results on the queries are the exact neighbours. Every index
searches with the same faiss thread count (`--threads`, faiss.omp_set_num_threads) and builds
with the same count (`--build-threads`, by default `--threads`: a million-item HNSW graph
takes about half an hour to build on one thread).
Queries per second: all queries in one search call; the indexes take turns, `--repeats`
rounds, median per index and median of the per-round ratios to flat. build-index holds flat's
and HNSW's arrays in 2 MiB pages (`faiss_index.back_with_huge_pages`); a copy of each on
ordinary 4 KiB pages takes the same rounds (`small_pages`: its speed-up over flat, and the
per-round ratio of its time to the index's, `huge_over_small_pages`). Also a sweep of the
search parameter (recall and queries per second at each value). Memory: bytes of the
serialized index, and the rise of the process's resident memory over the build.
`--kinds` builds only some of the approximate indexes (flat always: it gives the exact
neighbours) and `--hnsw-m` / `--hnsw-ef-construction` build HNSW with other parameters than
`build-index`'s defaults, to measure a candidate default before adopting it.
Writes `--out` (default benchmarks/results/index.json).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FULL = {"n": 1_000_000, "classes": 10_000, "queries": 10_000}
TINY = {"n": 10_000, "classes": 100, "queries": 500}
SWEEP = {"ivf": (1, 2, 4, 8, 16, 32, 64, 128), "hnsw": (16, 32, 64, 128, 256)}
SPREAD = 0.12
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
K = 10
SMALL_PAGES = ", 4 KiB pages"  # the timing key of an index's copy outside huge pages


def mixture(n, centres, spread, rng, chunk=100_000):
    """(float32 [n, d] unit vectors, labels [n]): a class centre plus N(0, spread^2) noise per
    dimension, normalised; classes drawn uniformly."""
    labels = rng.integers(0, len(centres), n)
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, chunk):
        part = labels[start:start + chunk]
        x = centres[part] + spread * rng.standard_normal((len(part), centres.shape[1]),
                                                         dtype=np.float32)
        out[start:start + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, labels


def make_data(n, queries, classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gallery, gallery_labels = mixture(n, centres, spread, rng)
    query, query_labels = mixture(queries, centres, spread, rng)
    return gallery, gallery_labels, query, query_labels


def build(kind, gallery, ids, overrides=None):
    """(faiss index, parameters, tuning or None, seconds, RSS rise MiB) of what `dnc-keras
    build-index --index KIND` builds: default parameters (with `overrides`, e.g. HNSW's M),
    search parameter tuned."""
    from dnc_keras.export import faiss_index

    parameters = {**faiss_index.default_parameters(kind, len(gallery)), **(overrides or {})}
    rss = common.current_rss_mib()
    start = time.perf_counter()
    index, tuning = faiss_index.build_tuned(kind, gallery, ids, parameters, TARGET_RECALL)
    seconds = time.perf_counter() - start
    if tuning:
        parameters[tuning["parameter"]] = tuning["value"]
    return index, parameters, tuning, seconds, common.current_rss_mib() - rss


def sweep(kind, index, query, truth, parameters, repeats, same_class):
    """Recall@10, top-1 class agreement and queries per second at each value of the search
    parameter."""
    from dnc_keras.export import faiss_index

    rows = []
    for value in SWEEP[kind]:
        faiss_index.set_search_parameter(index, kind, {faiss_index.SEARCH_PARAMETER[kind]: value})
        found = index.search(query, K)[1]
        seconds = statistics.median(common.interleaved({kind: lambda: index.search(query, K)},
                                                       repeats, warmup=0)[kind])
        rows.append({faiss_index.SEARCH_PARAMETER[kind]: value,
                     "recall_at_10": faiss_index.recall_at(found, truth, K),
                     "top1_same_class": same_class(found[:, 0]), "qps": len(query) / seconds})
    faiss_index.set_search_parameter(index, kind, parameters)
    return rows


def parse_args(argv=None):
    """The arguments, `out` resolved to the results path (benchmarks/results/tiny/ with
    --tiny)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_out_argument(parser, "index.json",
                            note=f"; --tiny: {TINY['n']:,} vectors, {TINY['classes']} classes, "
                                 f"{TINY['queries']:,} queries, seconds")
    parser.add_argument("--n", type=int, help=f"gallery size (default {FULL['n']:,})")
    parser.add_argument("--classes", type=int, help=f"default {FULL['classes']:,}")
    parser.add_argument("--queries", type=int, help=f"default {FULL['queries']:,}")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--spread", type=float, default=SPREAD,
                        help="standard deviation per dimension of the noise around a unit "
                             "class centre, before normalising")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss threads for every index's searches")
    parser.add_argument("--build-threads", type=int, default=None,
                        help="faiss threads for every index's build and tuning (default: "
                             "--threads)")
    parser.add_argument("--repeats", type=int, default=3, help="timed search rounds")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"],
                        choices=["flat", "ivf", "hnsw"],
                        help="indexes to build (flat always: it gives the exact neighbours)")
    parser.add_argument("--hnsw-m", type=int, default=None,
                        help="HNSW links per node (default: build-index's)")
    parser.add_argument("--hnsw-ef-construction", type=int, default=None,
                        help="HNSW build beam (default: build-index's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = common.resolve_out(args.out, "index.json", tiny=args.tiny)
    args.build_threads = args.build_threads or args.threads
    return args


def main(argv=None):
    args = parse_args(argv)
    sizes = {key: getattr(args, key) or (TINY if args.tiny else FULL)[key] for key in FULL}

    # dnc_keras first: importing it picks faiss's BLAS kernels (dnc_keras.blas_kernels), which
    # OpenBLAS reads once, when faiss loads. Loaded first, faiss ran OpenBLAS's generic SSE3
    # kernels on Intel Xeons, about 3x slower exact search, so every "x flat" was inflated.
    from dnc_keras.export import faiss_index

    import faiss  # noqa: E402  (after dnc_keras, see above)

    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    gallery, gallery_labels, query, query_labels = make_data(
        sizes["n"], sizes["queries"], sizes["classes"], args.dim, args.spread, args.seed)
    ids = np.arange(len(gallery), dtype=np.int64)
    print(f"{len(gallery):,} gallery and {len(query):,} query embeddings, {args.dim}-d, "
          f"{sizes['classes']:,} classes, spread {args.spread} "
          f"({time.perf_counter() - start:.0f} s); faiss threads {args.build_threads} to build, "
          f"{args.threads} to search", flush=True)

    kinds = [kind for kind in faiss_index.KINDS if kind == "flat" or kind in args.kinds]
    hnsw = {name: value for name, value in (("M", args.hnsw_m),
                                             ("efConstruction", args.hnsw_ef_construction))
            if value is not None}
    indexes, rows = {}, {}
    for kind in kinds:
        index, parameters, tuning, built, rss_rise = build(kind, gallery, ids,
                                                           hnsw if kind == "hnsw" else None)
        indexes[kind] = index
        rows[kind] = {"parameters": parameters, "tuning": tuning, "build_s": built,
                      "index_bytes": faiss_index.index_bytes(index), "rss_rise_mib": rss_rise}
        print(f"{kind}: built and tuned in {built:.1f} s, {parameters}, "
              f"{rows[kind]['index_bytes'] / 2**20:.0f} MiB", flush=True)

    # build-index holds flat's and HNSW's arrays in huge pages (faiss_index.back_with_huge_pages);
    # a copy of each on ordinary 4 KiB pages takes the same rounds, to show what that brings.
    small_pages = {}
    for kind in ("flat", "hnsw"):
        if kind in indexes:
            rows[kind]["huge_pages_mib"] = faiss_index.back_with_huge_pages(indexes[kind], kind)
            small_pages[kind] = faiss.deserialize_index(faiss.serialize_index(indexes[kind]))

    faiss.omp_set_num_threads(args.threads)
    # The exact neighbours come from the flat index itself (IndexFlatL2 is exact).
    truth = indexes["flat"].search(query, K)[1]

    def same_class(found):
        """Fraction of the queries whose found item has their class (-1: not found)."""
        return float(np.mean((found >= 0) & (gallery_labels[found] == query_labels)))

    for kind, index in indexes.items():
        found = index.search(query, K)[1]
        rows[kind]["recall_at_10"] = faiss_index.recall_at(found, truth, K)
        rows[kind]["top1_same_class"] = same_class(found[:, 0])
    exact_top10_same_class = float(np.mean(gallery_labels[truth] == query_labels[:, None]))

    loads = {}
    searches = {kind: (lambda index=index: index.search(query, K))
                for kind, index in indexes.items()}
    searches.update({f"{kind}{SMALL_PAGES}": (lambda index=index: index.search(query, K))
                     for kind, index in small_pages.items()})
    times = common.interleaved(searches, args.repeats, warmup=0, loads=loads)
    for kind in indexes:
        rows[kind]["search_s"] = common.summary(times[kind])
        rows[kind]["qps"] = len(query) / statistics.median(times[kind])
        rows[kind]["speedup_over_flat"] = common.paired_ratios(times["flat"], times[kind])
        rows[kind]["other_load"] = [round(v, 2) for v in loads[kind]]
        if kind in small_pages:
            small = times[f"{kind}{SMALL_PAGES}"]
            rows[kind]["small_pages"] = {
                "search_s": common.summary(small),
                "speedup_over_flat": common.paired_ratios(times["flat"], small),
                "huge_over_small_pages": common.paired_ratios(small, times[kind])}
    for kind in (k for k in faiss_index.SEARCH_PARAMETER if k in indexes):
        rows[kind]["sweep"] = sweep(kind, indexes[kind], query, truth, rows[kind]["parameters"],
                                    args.repeats, same_class)
        for point in rows[kind]["sweep"]:
            point["speedup_over_flat"] = point["qps"] / rows["flat"]["qps"]

    goal = {}
    for kind in (k for k in faiss_index.SEARCH_PARAMETER if k in indexes):
        row = rows[kind]
        goal[kind] = {"recall_at_10": row["recall_at_10"],
                      "speedup_over_flat": row["speedup_over_flat"]["median"],
                      "met": row["recall_at_10"] >= TARGET_RECALL
                      and row["speedup_over_flat"]["median"] >= TARGET_SPEEDUP}
    results = {"benchmark": "index",
               "settings": {**sizes, "dim": args.dim, "spread": args.spread, "k": K,
                            "threads": args.threads,
                            "build_threads": args.build_threads, "repeats": args.repeats,
                            "kinds": kinds, "hnsw_overrides": hnsw,
                            "seed": args.seed, "tiny": args.tiny},
               "data": {"nearest_neighbour_same_class": rows["flat"]["top1_same_class"],
                        "exact_top10_same_class": exact_top10_same_class,
                        "vectors_bytes": int(gallery.nbytes)},
               "target": {"recall_at_10": TARGET_RECALL, "speedup_over_flat": TARGET_SPEEDUP},
               "indexes": rows, "goal": goal}

    table = [(kind, rows[kind]["recall_at_10"], rows[kind]["qps"],
              rows[kind]["speedup_over_flat"]["median"], rows[kind]["build_s"],
              rows[kind]["index_bytes"] / 2**20, str(rows[kind]["parameters"]))
             for kind in indexes]
    print(common.table(table, ["index", "recall@10", "queries/s", "x flat", "build s",
                               "index MiB", "parameters"]))
    for kind, verdict in goal.items():
        print(f"{kind}: recall@10 {verdict['recall_at_10']:.3f} at "
              f"{verdict['speedup_over_flat']:.1f}x flat: goal "
              f"{'met' if verdict['met'] else 'NOT met'}")
    common.write_results(results, args.out, argv, __file__)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
