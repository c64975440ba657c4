"""One training process for the distributed tests: a tiny DnC run, its final state to a .npz.

TensorFlow's devices are fixed when it starts, so each configuration (logical CPU devices,
TF_CONFIG for a multi-worker cluster) runs in a process of its own:

    python dist_worker.py --devices 2 --runs one:custom,mirrored:custom --out result.npz

`--runs` trains one model per entry (strategy:loop) and saves, per run, its weights, cluster
assignment and losses under `<run>/...`. Strategies: one, mirrored, mirrored-local (each replica
mines its shard alone), multi-worker; loops: custom (DistributedTrainer over the sampler's pipeline),
dataset (over the sampler's tf.data pipeline), fit (model.fit).
`--pause-at N` prints PAUSED after N steps and sleeps, for a test to kill the process there.
"""

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

CLASSES, PER_CLASS, DIM = 16, 8, 12
EPOCHS, STEPS = 5, 4  # K = 1 -> divide to 2 at epoch 2 -> re-cluster and conquer at epoch 4


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM))
    y = np.repeat(np.arange(CLASSES), PER_CLASS)
    x = centres[y] + 0.6 * rng.normal(size=(len(y), DIM))
    return x.reshape(len(y), DIM, 1, 1).astype(np.float32), y


def build_model(strategy):
    from dnc_keras.backbones import build_encoder
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.losses import TripletHardLoss
    from dnc_keras.model import DnCModel

    keras.utils.set_random_seed(0)
    with strategy.scope():
        backbone = keras.Sequential([keras.Input((DIM, 1, 1)), keras.layers.Flatten(),
                                     keras.layers.Dense(16, activation="relu")])
        encoder = build_encoder(backbone, 8, dropout=0.0, freeze_bn_stats=False)
        model = DnCModel(encoder, SubspaceMasks(8, 2, mode="learned", initial_learners=1),
                         mask_lr_multiplier=1.0, weight_decay=1e-3)
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=TripletHardLoss(margin=0.2))
    return model


class Pause(keras.callbacks.Callback):
    """After `at` optimizer steps, says PAUSED and waits to be killed."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            print("PAUSED", flush=True)
            time.sleep(600)


def train(strategy, loop, args):
    from dnc_keras.training import distributed
    from dnc_keras.callbacks import dnc_callbacks
    from dnc_keras.sampling import ClusterBatchSampler

    x, y = blobs()
    model = build_model(strategy)
    sampler = ClusterBatchSampler(y, 4, 4, seed=0, steps_per_epoch=STEPS)
    callbacks = dnc_callbacks(sampler, x, period=2, conquer_epoch=4, backend="sklearn",
                              verbose=0)
    if args.pause_at:
        callbacks.append(Pause(args.pause_at))
    if loop == "fit":
        with strategy.scope():
            history = model.fit(sampler.as_dataset(x), epochs=EPOCHS, callbacks=callbacks,
                                verbose=0)
        restored = ""
    else:
        # custom: the sampler's tf.data pipeline, split by experimental_distribute_dataset.
        checkpoints = args.checkpoint_dir and os.path.join(args.checkpoint_dir, loop)
        trainer = distributed.DistributedTrainer(
            model, sampler, sampler.as_dataset(x), strategy=strategy, checkpoint_dir=checkpoints,
            checkpoint_every=args.checkpoint_every)
        history = trainer.fit(EPOCHS, callbacks=callbacks, verbose=0)
        restored = trainer.restored_from or ""
    return {"weights": np.concatenate([w.reshape(-1) for w in model.get_weights()]),
            "assignment": sampler.assignment, "learners": model.active_learners,
            "conquered": model.is_conquered, "loss": np.array(history.history.get("loss", [])),
            "restored_from": restored}


@contextlib.contextmanager
def local_mining(enabled):
    """The negative control: each replica mines and computes the loss on its own shard."""
    from dnc_keras import model

    gather = model.gather_global_batch
    if enabled:
        model.gather_global_batch = lambda labels, z: (labels, z)
    try:
        yield
    finally:
        model.gather_global_batch = gather


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--runs", default="one:custom")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    runs = [r.split(":") for r in args.runs.split(",")]
    if any(s == "multi-worker" for s, _ in runs):
        from dnc_keras.training.distributed import make_strategy

        multi_worker = make_strategy("multi-worker")  # before TensorFlow runs anything
    cpu = tf.config.list_physical_devices("CPU")[0]
    if args.devices > 1:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    # One strategy object per kind: two MirroredStrategy objects in one process would reuse
    # each other's collective instance keys.
    strategies = {"one": tf.distribute.get_strategy()}
    if any(s.startswith("mirrored") for s, _ in runs):
        strategies["mirrored"] = strategies["mirrored-local"] = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(args.devices)])
    if any(s == "multi-worker" for s, _ in runs):
        strategies["multi-worker"] = multi_worker
    results = {}
    for name, loop in runs:
        strategy = strategies[name]
        start = time.perf_counter()
        with local_mining(name == "mirrored-local"):
            for key, value in train(strategy, loop, args).items():
                results[f"{name}:{loop}/{key}"] = value
        print(f"{name}:{loop} trained in {time.perf_counter() - start:.1f}s", flush=True)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **results)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
