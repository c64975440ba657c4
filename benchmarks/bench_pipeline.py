"""Input pipeline: images/s that `ClusterBatchSampler.as_dataset` delivers against what the train
step consumes.

    python benchmarks/bench_pipeline.py                 # about 2 minutes on 2 cores
    python benchmarks/bench_pipeline.py --repeats 9
    python benchmarks/bench_pipeline.py --tiny          # seconds; the test suite's mode

Target (issue 6): the model never waits on data. Measured, interleaved in one process:
- `pipeline`: iterating `sampler.as_dataset(images)` alone (the generator of P x M index
  batches, the gather, the prefetch), on the glyphs training set (3,296 images, 103 classes,
  K = 4 clusters) and on 60,000 random 28x28 images in 12,000 classes with K = 8 (SOP's size);
- `pipeline+augment`: the same with the main job's augmentation (`--augment`: random rotation
  and translation), on glyphs;
- `step`: `DnCModel.fit` on one batch held in memory (no input work at all);
- `fit`: `DnCModel.fit` on the glyphs pipeline, the real thing.
Reported: images/s of each, the ratio pipeline / step (how much faster data arrives than it is
consumed; the pipeline runs on the same 2 cores, so > 1 is necessary, not sufficient) and
fit / step (the share of step speed lost to input: 1.0 means the model never waits).
Writes benchmarks/results/pipeline.json (another --n: pipeline_n-N.json; `--out` to change).
`--tiny`: random 28x28 images of 24 classes x 8 in place of glyphs (the candidates say
"random"), `--n 2000`, 2 batches and 2 steps per unit, 1 round, into
benchmarks/results/tiny/pipeline.json.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

P, M = 20, 4
BATCH = P * M


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=80, help="batches per pipeline unit")
    parser.add_argument("--steps", type=int, default=20, help="train steps per step/fit unit")
    parser.add_argument("--n", type=int, default=60_000,
                        help="images of the large set (N / 5 classes, K = 8)")
    common.add_out_argument(parser, "pipeline.json", note="; another --n is added to the name")
    args = parser.parse_args(argv)
    default = common.default_name("pipeline", args, parser, ["n"])
    if args.tiny:
        args.repeats, args.batches, args.steps, args.n = 1, 2, 2, 2000
    args.out = common.resolve_out(args.out, default, args.tiny)
    return args


def training_set(tiny):
    """("glyphs", x_train, y_train) of the glyphs set at 28x28; with `tiny`, ("random", random
    images of 24 classes x 8): rendering glyphs alone takes longer than a whole tiny run."""
    if not tiny:
        from dnc_keras.datasets import load_glyphs

        data = load_glyphs(image_size=28)
        return "glyphs", data.x_train, data.y_train
    return ("random", *common.tiny_training_set())


def _count(n):
    """60000 -> "60k", 400 -> "400": how the candidates name the large set's size."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv=None):
    args = parse_args(argv)

    import keras
    import tensorflow as tf

    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.training.config import TrainConfig
    from dnc_keras.training.job import _augmenter
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.losses import TripletHardLoss
    from dnc_keras.model import DnCModel
    from dnc_keras.sampling import ClusterBatchSampler

    name, x_train, y_train = training_set(args.tiny)
    glyphs = ClusterBatchSampler(y_train, P, M, seed=0)
    rng = np.random.default_rng(0)
    glyphs.set_clusters(rng.integers(0, 4, len(y_train)), 4)
    n = args.n
    sop_labels = rng.permutation(np.repeat(np.arange(n // 5), 5))
    sop_images = rng.random((len(sop_labels), 28, 28, 1), dtype=np.float32)
    sop = ClusterBatchSampler(sop_labels, P, M, seed=0)
    sop.set_clusters(rng.integers(0, 8, len(sop_labels)), 8)
    augment = _augmenter(TrainConfig(augment=True))

    def iterate(dataset):
        iterator = iter(dataset.repeat())

        def unit():
            for _ in range(args.batches):
                next(iterator)
        return unit

    encoder = build_encoder(conv4((28, 28, 1)), 128, freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(128, max_learners=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss())
    x, y = x_train[:BATCH], np.repeat(np.arange(P), M).astype(np.int32)
    options = tf.data.Options()
    options.autotune.enabled = False
    fixed = tf.data.Dataset.from_tensors(
        ({"images": x, "learner": np.zeros(BATCH, np.int32)}, y)).repeat().with_options(options)
    fit_data = glyphs.as_dataset(x_train).repeat()

    candidates = {
        f"pipeline ({name}, K=4)": iterate(glyphs.as_dataset(x_train)),
        f"pipeline ({_count(n)} images, {_count(n // 5)} classes, K=8)": iterate(
            sop.as_dataset(sop_images)),
        f"pipeline+augment ({name})": iterate(glyphs.as_dataset(x_train, augment=augment)),
        "step (batch in memory)": lambda: model.fit(fixed, epochs=1, steps_per_epoch=args.steps,
                                                    verbose=0),
        f"fit ({name} pipeline)": lambda: model.fit(fit_data, epochs=1,
                                                    steps_per_epoch=args.steps, verbose=0),
    }
    images = {name: (args.batches if name.startswith("pipeline") else args.steps) * BATCH
              for name in candidates}
    times = common.interleaved(candidates, args.repeats)
    rate = {name: images[name] / common.summary(t)["median_s"] for name, t in times.items()}
    step = "step (batch in memory)"
    ratios = {}
    for name, t in times.items():
        if name != step:
            # images/s ratio per round: (images_a / t_a) / (images_step / t_step)
            per_round = common.paired_ratios(times[step], t)
            scale = images[name] / images[step]
            ratios[name] = {k: (v * scale if isinstance(v, float) else
                                [r * scale for r in v]) for k, v in per_round.items()}
    rows = [(name, rate[name], ratios[name]["median"] if name in ratios else 1.0,
             common.summary(times[name])["spread"]) for name in times]
    print(common.table(rows, ["candidate", "images/s (median)", "/ step images/s", "spread"]))
    results = {"settings": vars(args), "images_per_s": rate, "ratio_to_step": ratios,
               "seconds": {name: common.summary(t) for name, t in times.items()}}
    return common.write_results(results, args.out, argv, __file__, name="pipeline")


if __name__ == "__main__":
    main()
