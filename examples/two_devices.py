"""Tutorial 2: divide and conquer on two devices, then on two worker processes.

    python examples/two_devices.py mirrored       # MirroredStrategy over two devices
    python examples/two_devices.py multi-worker   # MultiWorkerMirroredStrategy, two processes

Metric learning mines its pairs and triplets across the whole batch, so splitting a batch
between devices must not split the mining: `DnCModel.train_step` all-gathers the replicas'
embeddings and every replica computes the loss on the global batch (docs/distributed.md). The
two runs here show it: each trains the same tiny model on scikit-learn's digits and reports how
far its weights end from one device's.

Step by step:
1. The devices. With GPUs, `make_strategy("mirrored")` takes them all. So that the tutorial runs
   anywhere, `mirrored` splits the CPU into two logical devices; TensorFlow fixes its devices
   when it starts, so this comes first in the program.
2. The model is built and compiled inside `strategy.scope()`, so its variables are mirrored.
   The backbone's BatchNorm statistics are frozen: in training mode each device would normalise
   its own half of the batch, and the runs would differ by that (docs/distributed.md).
3. `DistributedTrainer` runs the loop: the sampler's global batches are split between the
   replicas, the DnC callbacks divide, re-cluster and conquer as under `model.fit`, and the
   re-clustering's embedding pass is sharded over the replicas too.
4. `multi-worker` starts two processes of this script on localhost ports; each gets its own
   `TF_CONFIG` (the cluster's addresses and its index) and creates
   `MultiWorkerMirroredStrategy` first thing. On a real cluster every machine runs the same
   command with its own `TF_CONFIG`. Worker 0, the chief, reports.

Prints one JSON line: the replicas, the learners, retrieval on the unseen digits, and the
largest difference of the weights from the same training on one device.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

EPOCHS, STEPS = 4, 4  # K = 1 -> divide to 2 at epoch 2 -> conquer the last epoch


def train(strategy, epochs=EPOCHS, steps=STEPS, seed=0):
    """Trains the tutorial's model under `strategy`; returns (model, sampler, history, metrics)."""
    import keras

    import dnc_keras
    from dnc_keras import datasets, losses
    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.training import distributed

    keras.utils.set_random_seed(seed)  # the same initial weights on every worker
    data = datasets.load("digits")  # 8x8 digits: 0-4 train, 5-9 are the unseen test classes
    # 2. Variables created in the scope are mirrored on every replica.
    with strategy.scope():
        encoder = build_encoder(conv4(data.x_train.shape[1:], width=16), embedding_dim=32,
                                dropout=0.0, freeze_bn_stats=True)
        model = dnc_keras.DnCModel(encoder, dnc_keras.SubspaceMasks(32, max_learners=2,
                                                                    initial_learners=1))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.TripletHardLoss())
    # 3. The global batch (4 classes x 4 images) splits into 8 images per replica.
    sampler = dnc_keras.ClusterBatchSampler(data.y_train, classes_per_batch=4,
                                            samples_per_class=4, seed=seed,
                                            steps_per_epoch=steps)
    callbacks = dnc_keras.dnc_callbacks(sampler, data.x_train, period=2,
                                        conquer_epoch=epochs - 1, backend="sklearn", verbose=0)
    trainer = distributed.DistributedTrainer(model, sampler, sampler.as_dataset(data.x_train),
                                             strategy=strategy)
    history = trainer.fit(epochs, callbacks=callbacks, verbose=0)
    metrics = dnc_keras.retrieval_metrics(model.embed(data.x_test), data.y_test, nmi=False)
    return model, sampler, history, metrics


def flat_weights(model):
    import numpy as np

    return np.concatenate([w.reshape(-1) for w in model.get_weights()])


def report(strategy, model, metrics, reference):
    """The JSON line this tutorial prints (`reference`: one device's weights)."""
    import numpy as np

    return {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "learners": model.active_learners, "conquered": model.is_conquered,
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
            "max_abs_weight_diff_vs_one_device":
                float(np.abs(flat_weights(model) - reference).max())}


def mirrored(epochs=EPOCHS, steps=STEPS):
    """One process, two logical CPU devices (or, on a GPU machine, pass the GPUs' names)."""
    import tensorflow as tf

    from dnc_keras.training import distributed

    # 1. Before TensorFlow runs anything: the CPU as two devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = distributed.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    one_device = tf.distribute.get_strategy()
    reference = flat_weights(train(one_device, epochs, steps)[0])
    model, _, _, metrics = train(strategy, epochs, steps)
    return report(strategy, model, metrics, reference)


def worker(index, ports, epochs=EPOCHS, steps=STEPS, weights_out=None):
    """One of the two worker processes; returns (strategy, model, metrics). The chief (worker
    0) saves its weights to `weights_out`."""
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index}})
    from dnc_keras.training import distributed

    strategy = distributed.make_strategy("multi-worker")  # first thing, as TF_CONFIG says
    model, _, _, metrics = train(strategy, epochs, steps)
    weights = flat_weights(model)
    if weights_out and distributed.is_chief(strategy):
        import numpy as np

        np.save(weights_out, weights)
    return strategy, model, metrics


def multi_worker(epochs=EPOCHS, steps=STEPS, timeout=300):
    """Starts two worker processes of this script on localhost; returns the chief's report."""
    import tempfile

    import numpy as np

    ports = _free_ports(2)
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        env.pop("TF_CONFIG", None)
        common = ["--ports", ",".join(map(str, ports)), "--epochs", str(epochs),
                  "--steps", str(steps)]
        # Two workers, and one device's run for comparison in a process of its own (a
        # worker's TensorFlow belongs to the cluster), all three at once.
        commands = [["worker", "--index", str(i), *common, "--weights-out",
                     os.path.join(folder, f"worker{i}.npy")] for i in range(2)]
        commands.append(["one-device", "--epochs", str(epochs), "--steps", str(steps),
                         "--weights-out", os.path.join(folder, "one.npy")])
        procs = [subprocess.Popen([sys.executable, __file__, *command], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for command in commands]
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
        for command, proc, (_, err) in zip(commands, procs, outputs):
            if proc.returncode:
                raise RuntimeError(f"{command[0]} process failed (exit {proc.returncode}): "
                                   f"{err[-2000:]}")
        chief = json.loads(outputs[0][0].strip().splitlines()[-1])
        diff = np.abs(np.load(os.path.join(folder, "worker0.npy"))
                      - np.load(os.path.join(folder, "one.npy"))).max()
    chief["max_abs_weight_diff_vs_one_device"] = float(diff)
    return chief


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("mirrored", "multi-worker", "worker", "one-device"),
                        help="mirrored or multi-worker (worker and one-device are the "
                             "processes multi-worker starts)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per epoch")
    parser.add_argument("--index", type=int, default=0, help="worker: its index")
    parser.add_argument("--ports", default="", help="worker: the two workers' ports")
    parser.add_argument("--weights-out", default=None, help="worker, one-device: .npy file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.mode == "mirrored":
        result = mirrored(args.epochs, args.steps)
    elif args.mode == "multi-worker":
        result = multi_worker(args.epochs, args.steps)
    elif args.mode == "worker":
        ports = [int(p) for p in args.ports.split(",") if p]
        if len(ports) != 2:
            parser.error(f"--ports needs two ports, e.g. 12345,12346. Received: {args.ports!r}")
        strategy, model, metrics = worker(args.index, ports, args.epochs, args.steps,
                                          args.weights_out)
        result = report(strategy, model, metrics, flat_weights(model))
        del result["max_abs_weight_diff_vs_one_device"]  # measured by the launcher
    else:
        import numpy as np
        import tensorflow as tf

        model = train(tf.distribute.get_strategy(), args.epochs, args.steps)[0]
        np.save(args.weights_out, flat_weights(model))
        result = {"weights": args.weights_out}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
