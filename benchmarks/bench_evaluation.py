"""Retrieval evaluation at SOP's size against the cost of the distance matrix alone.

    python benchmarks/bench_evaluation.py --with-before        # about 6 minutes on 2 cores
    python benchmarks/bench_evaluation.py                      # without the path before
    python benchmarks/bench_evaluation.py --nmi-iterations 100 # the full NMI k-means (~10 min)
    python benchmarks/bench_evaluation.py --tiny --with-before # seconds; the test suite's mode

Target (issue 6): `retrieval_metrics` (Recall@1/10/100/1000 and MAP@R, leave-one-out, no NMI)
on 60,000 x 512 embeddings takes at most 1.2x the practical bound, a chunked numpy matrix
product of the same size (every query against every item, 1,024 queries at a time, nothing
kept), and never holds a 60,000 x 60,000 matrix.

Interleaved rounds of: `retrieval_metrics`, the matrix-product bound and, with
`--with-before`, `retrieval_metrics` configured as before the optimisation (1,024 queries per
faiss search, faiss's default database blocks of 1,024, the neighbour list as deep as the
largest K). Peak memory: one extra run of each, measured as the rise of the process's peak
resident memory (VmHWM, reset before each) over the resident memory before it, and the peak of
Python-tracked allocations (tracemalloc: numpy arrays, not faiss's own buffers).

NMI on SOP means k-means with one cluster per test class (11,316): reported separately, as
the time of `--nmi-iterations` faiss iterations (default 2) and the extrapolation to the 100
that `evaluation._nmi` runs. Embeddings: unit vectors around 12,000 random class centres (SOP's
about 5 images per class), with noise giving Recall@1 near 0.7, like a trained model on SOP.
Writes benchmarks/results/evaluation.json with `--with-before`, evaluation_without_before.json
without it; another --n, --dim or --nmi-iterations adds them to the name, e.g.
evaluation_n-20000.json (`--out` to change). `--tiny`: 3,000 x 32 embeddings, 1 round, 1 NMI
iteration, into benchmarks/results/tiny/.
"""

import argparse
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SOP_KS = (1, 10, 100, 1000)


def sop_like(n, dim, per_class=5, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    classes = max(2, n // per_class)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def matmul_bound(x, chunk=1024):
    """Every query's similarities to every item, chunk by chunk; nothing kept."""
    for start in range(0, len(x), chunk):
        x[start:start + chunk] @ x.T


def before(x, labels, ks):
    """retrieval_metrics as it was configured before the optimisation (same results)."""
    from dnc_keras import evaluation

    saved = evaluation._MAX_SEARCH_DEPTH, evaluation._FAISS_DATABASE_BLOCK
    evaluation._MAX_SEARCH_DEPTH, evaluation._FAISS_DATABASE_BLOCK = max(ks), 1024
    try:
        return evaluation.retrieval_metrics(x, labels, ks=ks, nmi=False, batch_size=1024)
    finally:
        evaluation._MAX_SEARCH_DEPTH, evaluation._FAISS_DATABASE_BLOCK = saved


def peak_memory(fn):
    """(peak RSS rise over the RSS before, MiB; tracemalloc peak, MiB) of one call."""
    baseline = common.current_rss_mib()
    common.reset_peak_rss()
    tracemalloc.start()
    fn()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return common.current_peak_rss_mib() - baseline, traced / 2 ** 20


def nmi_cost(x, labels, iterations):
    """Seconds of `iterations` faiss k-means iterations with one cluster per class."""
    from dnc_keras.clustering import kmeans

    k = len(np.unique(labels))
    start = time.perf_counter()
    kmeans(x, k, n_iter=iterations, backend="faiss")
    return time.perf_counter() - start, k


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-before", action="store_true",
                        help="also time the configuration before the optimisation")
    parser.add_argument("--nmi-iterations", type=int, default=2,
                        help="faiss iterations of the NMI k-means to time (0: skip)")
    common.add_out_argument(parser, "evaluation.json", note=" with --with-before, "
                            "evaluation_without_before.json without; another --n, --dim or "
                            "--nmi-iterations is added to the name")
    args = parser.parse_args(argv)
    base = "evaluation" if args.with_before else "evaluation_without_before"
    default = common.default_name(base, args, parser, ["n", "dim", "nmi_iterations"])
    if args.tiny:
        args.n, args.dim, args.repeats, args.nmi_iterations = 3000, 32, 1, 1
    args.out = common.resolve_out(args.out, default, args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)

    from dnc_keras.evaluation import retrieval_metrics

    x, labels = sop_like(args.n, args.dim)
    print(f"{args.n} x {args.dim} embeddings, {len(np.unique(labels))} classes", flush=True)
    metrics = retrieval_metrics(x, labels, ks=SOP_KS, nmi=False)
    print("metrics:", {k: round(v, 4) for k, v in metrics.items()}, flush=True)
    candidates = {
        "retrieval_metrics": lambda: retrieval_metrics(x, labels, ks=SOP_KS, nmi=False),
        "matmul_bound": lambda: matmul_bound(x),
    }
    if args.with_before:
        candidates["before"] = lambda: before(x, labels, SOP_KS)
        old = before(x, labels, SOP_KS)
        print("largest difference from the configuration before:",
              max(abs(old[k] - metrics[k]) for k in metrics), flush=True)
    loads = {}
    times = common.interleaved(candidates, args.repeats, warmup=0, loads=loads)
    ratio = common.paired_ratios(times["retrieval_metrics"], times["matmul_bound"])
    results = {"settings": vars(args), "metrics": metrics,
               "seconds": {name: common.summary(t) for name, t in times.items()},
               "other_load": loads, "ratio_to_bound": ratio, "target": 1.2,
               "met": ratio["median"] <= 1.2}
    if "before" in times:
        results["before_over_after"] = common.paired_ratios(times["before"],
                                                            times["retrieval_metrics"])
    memory = {}
    for name, fn in candidates.items():
        rss, traced = peak_memory(fn)
        memory[name] = {"peak_rss_rise_mib": rss, "tracemalloc_peak_mib": traced}
    full_matrix_mib = args.n * args.n * 4 / 2 ** 20
    results["memory"] = memory
    results["full_matrix_mib"] = full_matrix_mib
    results["embeddings_mib"] = x.nbytes / 2 ** 20

    rows = [(name, statistics.median(t), statistics.median(t) / statistics.median(
        times["matmul_bound"]), memory[name]["peak_rss_rise_mib"],
        memory[name]["tracemalloc_peak_mib"], round(statistics.median(loads[name]), 2))
        for name, t in times.items()]
    print(common.table(rows, ["candidate", "seconds (median)", "x bound", "peak RSS rise MiB",
                              "tracemalloc peak MiB", "others' load (cores)"]))
    print(f"retrieval_metrics / matmul bound: {ratio['median']:.3f} (per-round "
          f"{ratio['min']:.3f}..{ratio['max']:.3f}; target <= 1.2). A full {args.n} x {args.n} "
          f"float32 matrix would be {full_matrix_mib:.0f} MiB.")
    if "before_over_after" in results:
        print(f"before / after: {results['before_over_after']['median']:.2f}x")

    if args.nmi_iterations:
        seconds, k = nmi_cost(x, labels, args.nmi_iterations)
        per_iteration = seconds / args.nmi_iterations
        results["nmi"] = {"clusters": k, "iterations_timed": args.nmi_iterations,
                          "seconds": seconds, "seconds_per_iteration": per_iteration,
                          "extrapolated_100_iterations_s": 100 * per_iteration}
        print(f"NMI k-means, {k} clusters: {seconds:.1f} s for {args.nmi_iterations} faiss "
              f"iterations -> about {100 * per_iteration:.0f} s for the 100 that NMI runs")
    return common.write_results(results, args.out, argv, __file__, name="evaluation")


if __name__ == "__main__":
    main()
