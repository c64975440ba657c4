"""Peak resident memory of the main job and of a 60,000-image re-clustering.

    python benchmarks/bench_memory.py                   # about 2 minutes on 2 cores
        # -> benchmarks/results/memory.json
    python benchmarks/bench_memory.py --n 120000 --skip-job
        # -> benchmarks/results/memory_recluster_n-120000.json (the re-clustering alone)
    python benchmarks/bench_memory.py --tiny            # seconds; the test suite's mode

1. `dnc-keras train` with its defaults (glyphs, Conv-4, K = 4, 10 epochs), run as a child
   process (`python -m dnc_keras.cli train`, with this Python): wall time and peak RSS (wait4's
   ru_maxrss of the child).
2. A re-clustering at SOP's size in a child process: a Conv-4 `DnCModel` with K = 4, N random
   28x28 images held in memory as the in-memory datasets are, a sampler over N / 5 classes, then
   the schedule callback's re-clustering (embed all N images, k-means, acceptance, matching). Reported:
   RSS before (TensorFlow, model, images), the peak during the re-clustering and its rise
   (VmHWM reset just before), and the arrays it needs at least (the N x 64 features).
Writes benchmarks/results/memory.json, or memory_recluster.json with `--skip-job` (a file
without the job's figures must not replace one with them); another --n or --job-args adds them
to the name; `--out` to change. `--tiny`: the
job on scikit-learn's digits (1 epoch of 2 steps, no plots) and a re-clustering of 400
images, into benchmarks/results/tiny/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def recluster_child(n):
    """Runs in the child: one re-clustering of n images; prints a JSON line."""
    import numpy as np

    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.callbacks import DnCScheduleCallback
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.model import DnCModel
    from dnc_keras.sampling import ClusterBatchSampler
    from dnc_keras.schedule import DnCSchedule

    after_import = common.current_rss_mib()
    encoder = build_encoder(conv4((28, 28, 1)), 128, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(128, max_learners=4))
    rng = np.random.default_rng(0)
    images = rng.random((n, 28, 28, 1), dtype=np.float32)
    labels = rng.permutation(np.repeat(np.arange(n // 5), 5))
    sampler = ClusterBatchSampler(labels, 20, 4, seed=0)
    # K = 4 from the start, T = 2: epoch 2 re-clusters.
    callback = DnCScheduleCallback(sampler, images, DnCSchedule(3, 4, 4, period=2), verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    model.embed(images[:256], output="features")  # trace the embedding function first
    before = common.current_rss_mib()
    common.reset_peak_rss()
    start = time.perf_counter()
    callback.on_epoch_begin(2)
    seconds = time.perf_counter() - start
    peak = common.current_peak_rss_mib()
    print(json.dumps({"n": n, "rss_after_import_mib": after_import, "rss_before_mib": before,
                      "peak_during_mib": peak, "rise_mib": peak - before,
                      "seconds": seconds, "images_mib": images.nbytes / 2 ** 20,
                      "features_mib": n * 64 * 4 / 2 ** 20,
                      "clusters": sampler.num_clusters}), flush=True)


TINY_JOB_ARGS = ["--dataset", "digits", "--epochs", "1", "--learners", "2", "--embedding-dim",
                 "16", "--classes-per-batch", "4", "--samples-per-class", "4",
                 "--steps-per-epoch", "2", "--no-plots", "--no-nmi"]


def default_out(skip_job):
    """memory, or memory_recluster when the job is skipped (the name, without .json)."""
    return "memory_recluster" if skip_job else "memory"


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000, help="images of the re-clustering")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments of dnc-keras train (put last)")
    common.add_out_argument(parser, "memory.json",
                            note=", or memory_recluster.json with --skip-job; another --n "
                            "or --job-args is added to the name")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default = common.default_name(default_out(args.skip_job), args, parser, ["n", "job_args"])
    if args.tiny and not args.child:
        args.n = 400
        args.job_args = TINY_JOB_ARGS + args.job_args
    args.out = common.resolve_out(args.out, default, args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return recluster_child(args.n)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    results = {"settings": vars(args)}
    if not args.skip_job:
        with tempfile.TemporaryDirectory() as out:
            # `python -m dnc_keras.cli` rather than the `dnc-keras` script beside this Python:
            # the script may belong to another checkout than the package this process uses.
            # From the temporary folder, so no checkout in the working folder shadows it.
            command = [sys.executable, "-m", "dnc_keras.cli", "train",
                       "--out", os.path.join(out, "run"), *args.job_args]
            print("running:", " ".join(command), flush=True)
            seconds, peak, code = common.run_measured(command, env=env, cwd=out)
        results["job"] = {"command": " ".join(["dnc-keras", "train", *args.job_args]),
                          "seconds": seconds, "peak_rss_mib": peak, "returncode": code}
        print(f"dnc-keras train: {seconds:.0f} s, peak RSS {peak:.0f} MiB (exit {code})",
              flush=True)
        if code:
            raise SystemExit(f"dnc-keras train failed ({code}): no figures to write")

    command = [sys.executable, os.path.abspath(__file__), "--child", "--n", str(args.n)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"re-clustering child failed ({proc.returncode})")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    results["recluster"] = child
    print(f"re-clustering {args.n} images: {child['seconds']:.1f} s; RSS before "
          f"{child['rss_before_mib']:.0f} MiB (TensorFlow alone {child['rss_after_import_mib']:.0f}"
          f", images {child['images_mib']:.0f}), peak during {child['peak_during_mib']:.0f} MiB "
          f"(+{child['rise_mib']:.0f} MiB)")
    return common.write_results(results, args.out, argv, __file__, name="memory")


if __name__ == "__main__":
    main()
