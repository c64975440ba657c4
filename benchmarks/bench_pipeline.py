"""Input pipeline: images/s that `ClusterBatchSampler.as_dataset` delivers against what the train
step consumes.

    python benchmarks/bench_pipeline.py                 # about 2 minutes on 2 cores
    python benchmarks/bench_pipeline.py --repeats 9

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
Writes benchmarks/results/pipeline.json.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

P, M = 20, 4
BATCH = P * M


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=80, help="batches per pipeline unit")
    parser.add_argument("--steps", type=int, default=20, help="train steps per step/fit unit")
    parser.add_argument("--out", default="pipeline")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.datasets import load_glyphs
    from dnc_keras.job import _augmenter
    from dnc_keras.config import TrainConfig
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.losses import TripletHardLoss
    from dnc_keras.model import DnCModel
    from dnc_keras.sampling import ClusterBatchSampler

    data = load_glyphs(image_size=28)
    glyphs = ClusterBatchSampler(data.y_train, P, M, seed=0)
    rng = np.random.default_rng(0)
    glyphs.set_clusters(rng.integers(0, 4, len(data.y_train)), 4)
    n = 60_000
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
    x, y = data.x_train[:BATCH], np.repeat(np.arange(P), M).astype(np.int32)
    options = tf.data.Options()
    options.autotune.enabled = False
    fixed = tf.data.Dataset.from_tensors(
        ({"images": x, "learner": np.zeros(BATCH, np.int32)}, y)).repeat().with_options(options)
    fit_data = glyphs.as_dataset(data.x_train).repeat()

    candidates = {
        "pipeline (glyphs, K=4)": iterate(glyphs.as_dataset(data.x_train)),
        "pipeline (60k images, 12k classes, K=8)": iterate(sop.as_dataset(sop_images)),
        "pipeline+augment (glyphs)": iterate(glyphs.as_dataset(data.x_train, augment=augment)),
        "step (batch in memory)": lambda: model.fit(fixed, epochs=1, steps_per_epoch=args.steps,
                                                    verbose=0),
        "fit (glyphs pipeline)": lambda: model.fit(fit_data, epochs=1,
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
    common.write_results(args.out, results)


if __name__ == "__main__":
    main()
