"""Distributed training loop on CPU: steps/s for 1 and 2 replicas, and the global-batch gather.

    python benchmarks/bench_distributed.py                  # about 2 minutes on 2 busy cores
    python benchmarks/bench_distributed.py --steps 30 --repeats 7   # distributed.json's command
    python benchmarks/bench_distributed.py --tiny           # seconds; the test suite's mode

One process with two logical CPU devices (`tf.config.set_logical_device_configuration`), so
all candidates share one TensorFlow runtime and are timed interleaved (A B C, A B C, ...); the
report gives medians and the median of per-round ratios (see common.py). The model is the
Conv-4 of the glyphs job (28x28x1, 4 x conv-BN-ReLU-pool, dense 128), K = 4 fixed learners,
batch-hard triplet loss, Adam, global batch 80 = 20 classes x 4 images, on random images with
a random 4-cluster assignment (only the step's cost matters here). A unit is one epoch of
`--steps` steps of `DistributedTrainer.fit` (no callbacks, no checkpoints) or of `model.fit`:

- `loop_1`: `DistributedTrainer` under the default strategy (one device);
- `loop_2`: `DistributedTrainer` under `MirroredStrategy` over the two logical CPUs, mining on
  the all-gathered global batch (what the library does);
- `loop_2_local`: the same with the gather removed, each replica mining its 40 images alone
  (what a naive data-parallel loop would do). `loop_2` against `loop_2_local` is the cost of
  global-batch mining: the all-gathers and the loss on 80 rather than 40 embeddings;
- `fit_1`, `fit_2`: `DnCModel.fit` on one device and under the same `MirroredStrategy`.

And `gather`: the all-gather alone, 200 chained all-gathers of one replica's embeddings
([40, 128] float32) and labels inside one `tf.function`, per gather.

Both logical devices share the same physical cores, so 2 replicas cannot be faster on CPU:
these figures measure the loop's and the collectives' overhead, not scaling (for that, see
docs/distributed.md). Writes benchmarks/results/distributed.json (`--out` to change;
`--tiny`: 2 steps, 1 round, 2 gathers, into benchmarks/results/tiny/distributed.json).

The logical devices must be configured before TensorFlow starts its runtime, so this runs in a
process of its own (the tests start it as a subprocess).
"""

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402

CLASSES, PER_CLASS, LEARNERS, DIM = 100, 20, 4, 128
P, M = 20, 4


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed unit")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--gathers", type=int, default=200, help="all-gathers per gather unit")
    common.add_out_argument(parser, "distributed.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.repeats, args.gathers = 2, 1, 2
    args.out = common.resolve_out(args.out, "distributed.json", args.tiny)
    return args


def main(argv=None):
    args = parse_args(argv)

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from dnc_keras import model as model_module
    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.training.distributed import DistributedTrainer
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.losses import TripletHardLoss
    from dnc_keras.model import DnCModel
    from dnc_keras.sampling import ClusterBatchSampler

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    images = rng.uniform(size=(len(labels), 28, 28, 1)).astype(np.float32)
    clusters = rng.integers(0, LEARNERS, size=CLASSES)[labels]
    one = tf.distribute.get_strategy()
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def setup(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            encoder = build_encoder(conv4((28, 28, 1)), DIM, freeze_bn_stats=False)
            model = DnCModel(encoder, SubspaceMasks(DIM, LEARNERS))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss())
        sampler = ClusterBatchSampler(labels, P, M, seed=0, steps_per_epoch=args.steps)
        sampler.set_clusters(clusters, LEARNERS)
        return model, sampler

    def loop(strategy, local=False):
        model, sampler = setup(strategy)
        trainer = DistributedTrainer(model, sampler, sampler.as_dataset(images),
                                     strategy=strategy)
        return lambda: run_patched(local, lambda: trainer.fit(1, verbose=0))

    def fit(strategy):
        model, sampler = setup(strategy)
        dataset = sampler.as_dataset(images)

        def unit():
            with strategy.scope():
                model.fit(dataset, epochs=1, verbose=0)
        return unit

    @contextlib.contextmanager
    def local_mining(enabled):
        gather = model_module.gather_global_batch
        if enabled:
            model_module.gather_global_batch = lambda y, z: (y, z)
        try:
            yield
        finally:
            model_module.gather_global_batch = gather

    def run_patched(local, fn):
        # The step is traced on the first call (the warm-up round), under the patch or not.
        with local_mining(local):
            fn()

    gathers = gather_unit(two, args.gathers)
    candidates = {"loop_1": loop(one), "loop_2": loop(two), "loop_2_local": loop(two, True),
                  "fit_1": fit(one), "fit_2": fit(two), "gather": gathers}
    start = time.perf_counter()
    times = common.interleaved(candidates, args.repeats, warmup=1)
    total = time.perf_counter() - start

    results = {"settings": {"steps_per_unit": args.steps, "repeats": args.repeats,
                            "global_batch": P * M, "embedding_dim": DIM, "learners": LEARNERS,
                            "backbone": "conv4 28x28x1", "loss": "triplet_hard",
                            "gathers_per_unit": args.gathers,
                            "devices": "2 logical CPU devices on the same cores"},
               "candidates": {}, "ratios": {}, "seconds_total": round(total, 1)}
    for name, seconds in times.items():
        entry = common.summary(seconds)
        if name == "gather":
            entry["per_gather_us"] = entry["median_s"] / args.gathers * 1e6
        else:
            entry["steps_per_s"] = args.steps / entry["median_s"]
            entry["images_per_s"] = args.steps * P * M / entry["median_s"]
        results["candidates"][name] = entry
    pairs = {"loop_2 / loop_1 (time)": ("loop_2", "loop_1"),
             "loop_2 / loop_2_local (time): global-batch mining": ("loop_2", "loop_2_local"),
             "fit_2 / fit_1 (time)": ("fit_2", "fit_1"),
             "loop_1 / fit_1 (time)": ("loop_1", "fit_1"),
             "loop_2 / fit_2 (time)": ("loop_2", "fit_2")}
    for label, (a, b) in pairs.items():
        results["ratios"][label] = common.paired_ratios(times[a], times[b])
    # From the paired ratio, not from two medians: load from other processes moves whole rounds.
    local_ms = results["candidates"]["loop_2_local"]["median_s"] / args.steps * 1e3
    mining = results["ratios"]["loop_2 / loop_2_local (time): global-batch mining"]["median"]
    results["global_batch_overhead_ms_per_step"] = (mining - 1.0) * local_ms
    gather_ms = results["candidates"]["gather"]["per_gather_us"] / 1e3
    # Per step: the forward all-gathers of embeddings and labels, and in the backward pass an
    # all-reduce of the gathered gradient plus a small all-gather of the shard sizes.
    results["gather_share_of_step_estimate"] = 2 * gather_ms / (local_ms * mining)

    print(f"{'candidate':14s} {'steps/s':>8s} {'images/s':>9s} {'spread':>7s}")
    for name, entry in results["candidates"].items():
        if name == "gather":
            print(f"{name:14s} {entry['per_gather_us']:8.0f} us per all-gather of [40, 128] "
                  f"+ labels (spread {entry['spread']:.0%})")
        else:
            print(f"{name:14s} {entry['steps_per_s']:8.2f} {entry['images_per_s']:9.0f} "
                  f"{entry['spread']:7.0%}")
    for label, ratio in results["ratios"].items():
        print(f"{label:52s} {ratio['median']:.3f} (min {ratio['min']:.3f}, "
              f"max {ratio['max']:.3f})")
    print(f"global-batch mining: {results['global_batch_overhead_ms_per_step']:+.1f} ms per step "
          f"(paired ratio {mining:.3f} on {local_ms:.1f} ms); the collectives alone, about "
          f"{results['gather_share_of_step_estimate']:.1%} of a step")
    common.write_results(results, args.out, argv, __file__, name="distributed")


def gather_unit(strategy, count):
    """A unit of `count` chained all-gathers of one replica's embeddings and labels."""
    per_replica = P * M // strategy.num_replicas_in_sync

    def replica_fn():
        context = tf.distribute.get_replica_context()
        z = tf.ones([per_replica, DIM])
        y = tf.zeros([per_replica], tf.int32)
        for _ in range(count):
            # Chained, so the gathers run one after another as in consecutive steps.
            z = context.all_gather(z, axis=0)[:per_replica] * 1.0001
            y = context.all_gather(y, axis=0)[:per_replica] + 1
        return tf.reduce_sum(z) + tf.cast(tf.reduce_sum(y), tf.float32)

    @tf.function
    def run():
        return strategy.run(replica_fn)

    return lambda: [t.numpy() for t in strategy.experimental_local_results(run())]


if __name__ == "__main__":
    main()
