"""Train-step and epoch throughput: DnC against plain Keras, Keras + XLA and PyTorch + pml.

    python benchmarks/bench_train_step.py                 # default: about 5 minutes on 2 cores
        # -> benchmarks/results/train_step.json (step and epoch)
    python benchmarks/bench_train_step.py --skip-step     # -> train_step_epoch.json
    python benchmarks/bench_train_step.py --skip-epoch    # -> train_step_step.json
    python benchmarks/bench_train_step.py --repeats 9 --steps 40 --learners 8
        # -> train_step_learners-8.json
    python benchmarks/bench_train_step.py --tiny --skip-epoch   # seconds; the test suite's mode

Two measurements, each candidate in its own worker process (TensorFlow's and PyTorch's thread
pools would otherwise compete inside one process; a worker waits on a pipe between rounds, so it
burns no CPU while the others run). The parent asks each worker in turn for one timed unit of
work, round after round (A B C, A B C, ...), and reports medians and the median of per-round
ratios, so load from other processes hits every candidate alike.

1. Step: the same Conv-4 (28x28x1, 4 x conv 3x3-BN-ReLU-maxpool, GAP, dropout 0.01, dense 128),
   batch 80 = 20 classes x 4 images, batch-hard triplet loss (margin 1.0) on the L2-normalised
   embedding, Adam 1e-3, on the same 41 real glyphs batches held in memory, cycled (so only
   the step is timed, never the input pipeline):
   - `dnc`: `DnCModel.fit` with K learners (fixed blocks), the batch routed to learner 1;
   - `keras`: a plain `keras.Model` (encoder -> UnitNormalization) `fit` with the same loss;
   - `keras+xla`, `dnc+xla`: the same with `jit_compile=True`;
   - `dnc+unfused_bn`: `dnc` with Keras's own (unfused) BatchNormalization, the step before
     `FusedBatchNormalization`; other options after "+" are listed in `OPTIONS`;
   - `torch_pml`, `torch_pml@2`, `torch_pml@3`: the PyTorch Conv-4 with pytorch-metric-learning's
     `TripletMarginLoss` (margin 1.0) on `BatchHardMiner` triplets, `torch.optim.Adam`, in three
     processes: a PyTorch process ran either at about 2,100 or at about 1,400 images/s (with 1.5x
     the CPU time per step), the same all its life, whatever its input's alignment or denormal
     flushing, so the peer is credited with its fastest process, round by round.
   A unit is `--steps` steps (one `fit` call for Keras); figures are images per second. Before
   each round the parent waits (up to `--max-wait` s) for other processes to go quiet, and
   every unit records the CPU that other processes used meanwhile (`other_load`, in cores).
2. Epoch: two epochs of `DnCModel.fit` on the glyphs training set (K learners, the sampler's
   tf.data pipeline, re-clustering every 2 epochs, so each unit holds exactly one
   re-clustering) against two epochs of the plain Keras model over the same sampler with one
   cluster (same batches per epoch, same pipeline). Target: ratio <= 1.10. Also
   `dnc_epoch+norecluster`, the DnC epochs without their re-clustering, and `dnc_epoch+bank`,
   re-clustering on the features the train steps computed (`feature_source="training"`).

Writes benchmarks/results/train_step.json; with `--skip-step`, train_step_epoch.json, with
`--skip-epoch`, train_step_step.json, so that a run of one half never replaces a file holding
both; another --learners, --candidates or --epoch-candidates adds them to the name, e.g.
train_step_learners-8.json (`--out` to change). Needs the `benchmark` extra for the PyTorch peer
(`pip install -e .[benchmark]`); without torch that candidate is skipped, and the results say
so under "skipped". `--tiny`: random 28x28 images of 24 classes x 8 in place of glyphs (in every
worker), 2 steps per unit, 1 round, workers started together, no waiting for quiet; step
candidates dnc, keras and torch_pml, epoch candidates dnc_epoch and keras_epoch; into
benchmarks/results/tiny/.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCH_CLASSES, BATCH_PER_CLASS = 20, 4
BATCH = BATCH_CLASSES * BATCH_PER_CLASS
IMAGE = (28, 28, 1)
STEP_CANDIDATES = ("dnc", "keras", "torch_pml", "torch_pml@2", "torch_pml@3", "keras+xla",
                   "dnc+xla", "dnc+unfused_bn")
# Options a candidate name may carry after "+": xla (jit_compile=True), spe (steps_per_execution
# = --steps), interop1 (one inter-op thread), unfused_bn (Keras's own BatchNormalization in the
# Conv-4, what dnc_keras used before FusedBatchNormalization), onednn0 (TF_ENABLE_ONEDNN_OPTS=0),
# t1 (torch: one thread), bf16 (Keras's "mixed_bfloat16" policy: bfloat16 convolutions, as
# oneDNN runs them on CPUs with AVX512-BF16 or AMX; losses stay float32), fpmath_bf16
# (ONEDNN_DEFAULT_FPMATH_MODE=BF16: float32 layers, oneDNN free to compute in bfloat16),
# caller_thread (TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1), ftz (torch: flush denormals to zero,
# as TensorFlow does by default), norecluster (dnc_epoch without its re-clustering: the
# training part of the DnC epoch alone), bank (dnc_epoch re-clustering on the features its
# train steps computed, feature_source="training", instead of a separate pass), renorm (the
# Conv-4 with batch renormalisation, what `dnc-keras train` trains by default, where the other
# candidates build Keras's plain BatchNorm default of `backbones.conv4`; torch_pml+renorm: the
# same arithmetic in PyTorch, `_torch_batch_renorm`), walk (epochs: the sampler walks each
# cluster without replacement; with renorm and bank, a run's default).
OPTIONS = ("xla", "spe", "interop1", "unfused_bn", "onednn0", "t1", "bf16", "fpmath_bf16",
           "caller_thread", "ftz", "norecluster", "bank", "renorm", "walk")


def _parse(candidate):
    """("base", {options}) of a name like "dnc+xla"; a suffix "@2" names another process of
    the same candidate (PyTorch's speed differed by 1.5x from one process to the next)."""
    base, *options = candidate.split("@")[0].split("+")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} in {candidate!r}; "
                         f"known: {OPTIONS}")
    return base, set(options)


EPOCH_CANDIDATES = ("dnc_epoch", "keras_epoch")
TINY_CANDIDATES = ("dnc", "keras", "torch_pml")
TORCH_MISSING = ("torch / pytorch-metric-learning not installed: skipped "
                 "(pip install -e .[benchmark])")


def _training_set(tiny):
    """(images, labels) of the glyphs training set at 28x28, or random ones with `tiny`."""
    if tiny:
        return common.tiny_training_set(size=IMAGE[0])
    from dnc_keras.datasets import load_glyphs

    data = load_glyphs(image_size=IMAGE[0])
    return data.x_train, data.y_train


# -- workers ------------------------------------------------------------------------------------
def _batches(tiny=False):
    """One epoch of real P x M batches of the glyphs training set, held in memory:
    images [S, 80, 28, 28, 1] and labels [S, 80], the same for every candidate.

    Real, changing batches keep the loss alive, as in training: on one repeated batch the
    batch-hard loss falls to 0 within a few dozen steps.
    """
    import numpy as np

    from dnc_keras.sampling import ClusterBatchSampler

    x_train, y_train = _training_set(tiny)
    sampler = ClusterBatchSampler(y_train, BATCH_CLASSES, BATCH_PER_CLASS, seed=0)
    indices = np.stack([i for i, _ in sampler.epoch_batches()])
    return x_train[indices], y_train[indices].astype(np.int32)


def _keras_plain_model(jit_compile, steps_per_execution=1, normalization="batch"):
    import keras

    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.losses import TripletHardLoss

    encoder = build_encoder(conv4(IMAGE, normalization=normalization), 128,
                            freeze_bn_stats=False)
    inputs = keras.Input(IMAGE)
    _, z = encoder(inputs)
    model = keras.Model(inputs, keras.layers.UnitNormalization()(z))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss(margin=1.0),
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model


def _dnc_model(learners, jit_compile, steps_per_execution=1, normalization="batch"):
    import keras

    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.layers import SubspaceMasks
    from dnc_keras.losses import TripletHardLoss
    from dnc_keras.model import DnCModel

    encoder = build_encoder(conv4(IMAGE, normalization=normalization), 128,
                            freeze_bn_stats=False)
    model = DnCModel(encoder, SubspaceMasks(128, max_learners=learners))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletHardLoss(margin=1.0),
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model


def _normalization(options):
    """The Conv-4's normalisation a candidate's options ask for."""
    return "renorm" if "renorm" in options else "batch"


def _configure_tf(options):
    import tensorflow as tf

    if "interop1" in options:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if "bf16" in options:
        import keras

        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    if "unfused_bn" in options:
        import keras

        from dnc_keras import backbones

        backbones.FusedBatchNormalization = keras.layers.BatchNormalization


def _keras_step_unit(name, options, args):
    import numpy as np
    import tensorflow as tf

    _configure_tf(options)
    x, y = _batches(args.tiny)
    jit = "xla" in options
    spe = args.steps if "spe" in options else 1
    if name == "dnc":
        model = _dnc_model(args.learners, jit, spe, _normalization(options))
        learner = np.full(y.shape, min(1, args.learners - 1), np.int32)
        inputs = {"images": x, "learner": learner}
    else:
        model = _keras_plain_model(jit, spe, _normalization(options))
        inputs = x
    # Without autotuning, as the sampler's pipeline: joining tf.data's tuning thread at the end
    # of each fit call would add 0.1-1 s to some units and none to others.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).repeat().with_options(options)

    def unit():
        model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0)
    return unit, {"images_per_unit": args.steps * BATCH}


def _torch_step_unit(options, args):
    import numpy as np
    import torch
    from pytorch_metric_learning import losses, miners

    if "t1" in options:
        torch.set_num_threads(1)
    if "ftz" in options:
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    layers, channels = [], IMAGE[-1]
    norm = _torch_batch_renorm() if "renorm" in options else torch.nn.BatchNorm2d
    for _ in range(4):
        layers += [torch.nn.Conv2d(channels, 64, 3, padding=1, bias=False),
                   norm(64), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        channels = 64
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Dropout(0.01), torch.nn.Linear(64, 128))
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = losses.TripletMarginLoss(margin=1.0)
    miner = miners.BatchHardMiner()
    x, y = _batches(args.tiny)
    batches = [(torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2))),
                torch.from_numpy(yb.astype(np.int64))) for xb, yb in zip(x, y)]
    state = {"step": 0}

    def unit():
        for _ in range(args.steps):
            images, labels = batches[state["step"] % len(batches)]
            state["step"] += 1
            optimizer.zero_grad(set_to_none=True)
            embeddings = torch.nn.functional.normalize(net(images), dim=1)
            loss = loss_fn(embeddings, labels, miner(embeddings, labels))
            loss.backward()
            optimizer.step()
    return unit, {"images_per_unit": args.steps * BATCH, "torch_threads": torch.get_num_threads()}


def _torch_batch_renorm():
    """A PyTorch BatchNorm2d computing what `backbones.FusedBatchNormalization(renorm=True)`
    computes in training (Ioffe, 2017, unclipped, as Keras's `renorm=True`): the batch's
    moments, then r = sigma_B / sigma_renorm and d = (mu_B - mu_renorm) / sigma_renorm, constants
    in the gradient, folded into the scale and offset of one fused batch norm, and the renorm
    statistics moved towards the batch's. PyTorch has no batch renormalisation, so the peer of
    the Conv-4 `dnc-keras train` trains by default is this, with the same passes over the
    activation as the Keras layer (one for the moments, one fused normalisation)."""
    import torch

    class TorchBatchRenorm(torch.nn.BatchNorm2d):
        def __init__(self, channels, renorm_momentum=0.99):
            super().__init__(channels)
            self.register_buffer("renorm_mean", torch.zeros(channels))
            self.register_buffer("renorm_stddev", torch.ones(channels))
            self.renorm_momentum = renorm_momentum

        def forward(self, x):
            if not self.training:
                return super().forward(x)
            with torch.no_grad():
                variance, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
                stddev = torch.sqrt(variance + self.eps)
                r = stddev / self.renorm_stddev
                d = (mean - self.renorm_mean) / self.renorm_stddev
                self.renorm_mean.lerp_(mean, 1.0 - self.renorm_momentum)
                self.renorm_stddev.lerp_(stddev, 1.0 - self.renorm_momentum)
            return torch.nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight * r,
                self.bias + self.weight * d, training=True, momentum=self.momentum,
                eps=self.eps)

    return TorchBatchRenorm


def _epoch_unit(name, options, args):
    import keras

    from dnc_keras.callbacks import dnc_callbacks
    from dnc_keras.sampling import ClusterBatchSampler
    from dnc_keras.schedule import DnCSchedule

    _configure_tf(options)
    x, y = _training_set(args.tiny)
    keras.utils.set_random_seed(0)
    order = "walk" if "walk" in options else "random"
    if name == "dnc_epoch":
        sampler = ClusterBatchSampler(y, BATCH_CLASSES, BATCH_PER_CLASS, seed=0, order=order)
        model = _dnc_model(args.learners, "xla" in options,
                           normalization=_normalization(options))
        dataset = sampler.as_dataset(x)
        period = 10 ** 9 if "norecluster" in options else 2
        # fit is called once per unit: the schedule spans every unit, not the first fit's
        # epochs (a callback plans from fit's epochs when given no schedule).
        schedule = DnCSchedule(1000, args.learners, args.learners, period)
        callbacks = dnc_callbacks(sampler, x, period=period, schedule=schedule,
                                  feature_source="training" if "bank" in options else "pass",
                                  verbose=0)
    else:
        sampler = ClusterBatchSampler(y, BATCH_CLASSES, BATCH_PER_CLASS, seed=0, order=order)
        model = _keras_plain_model("xla" in options, normalization=_normalization(options))
        dataset = sampler.as_dataset(x).map(lambda inputs, labels: (inputs["images"], labels))
        callbacks = []
    state = {"epoch": 0}

    def unit():
        # Two epochs per unit: with period 2, each DnC unit holds exactly one re-clustering
        # (at its first epoch), the cost amortised over the period.
        start = state["epoch"]
        state["reclusterings_before"] = len(_recluster_seconds())
        model.fit(dataset, initial_epoch=start, epochs=start + 2, callbacks=callbacks,
                  verbose=0)
        state["epoch"] = start + 2
    extra = {"train_images": int(len(x)), "steps_per_epoch": sampler.steps,
             "images_per_unit": 2 * sampler.steps * BATCH}

    def _reclusterings():
        return [o for c in callbacks for o in getattr(c, "outcomes", [])
                if o["action"] in ("cluster", "recluster")]

    def _recluster_seconds():
        return [o["seconds"] for o in _reclusterings()]

    def info():
        # Only the re-clusterings of the last unit (not the warm-up's first clustering).
        first = state["reclusterings_before"]
        embedded = [o["embedded"] for o in _reclusterings()]
        return {"recluster_seconds": _recluster_seconds()[first:],
                "recluster_embedded_images": embedded[first:]}
    return unit, extra, info


def worker(name, args):
    """Builds one candidate, warms it up, then runs one unit per line read from stdin."""
    info = None
    base, options = _parse(name)
    if base == "torch_pml":
        unit, extra = _torch_step_unit(options, args)
    elif base in EPOCH_CANDIDATES:
        unit, extra, info = _epoch_unit(base, options, args)
    else:
        unit, extra = _keras_step_unit(base, options, args)
    unit()  # warm-up: tracing, XLA compilation, the first re-clustering
    print(json.dumps({"ready": name, **extra}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        cpu, start = os.times(), time.perf_counter()
        unit()
        seconds = time.perf_counter() - start
        cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                          **(info() if info else {})}), flush=True)


# -- parent -------------------------------------------------------------------------------------
class Worker:
    def __init__(self, name, args):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
        if "onednn0" in _parse(name)[1]:
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        if "caller_thread" in _parse(name)[1]:
            env["TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD"] = "1"
        if "fpmath_bf16" in _parse(name)[1]:
            env["ONEDNN_DEFAULT_FPMATH_MODE"] = "BF16"
        command = [sys.executable, os.path.abspath(__file__), "--worker", name,
                   "--steps", str(args.steps), "--learners", str(args.learners)]
        if args.tiny:
            command.append("--tiny")
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info = None

    def ready(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died before it was ready")
        self.info = json.loads(line)
        return self.info

    def run(self):
        busy = common.busy_cpu_seconds()
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        result = json.loads(line)
        result["other_load"] = common.other_load(busy, result["cpu_seconds"], result["seconds"])
        return result

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def measure(names, repeats, args):
    """Starts one worker per candidate (one at a time, so warm-ups do not overlap; with --tiny,
    all at once, as nothing it times means anything), then runs `repeats` interleaved rounds,
    each after waiting (up to `--max-wait` s) for the other processes of the machine to go
    quiet. Returns name -> (info, per-round results)."""
    workers = []
    try:
        for name in names:
            workers.append(Worker(name, args))
            if not args.tiny:  # this one's warm-up ends before the next worker starts
                print(f"  {name}: ready {workers[-1].ready()}", flush=True)
        if args.tiny:
            for w in workers:
                print(f"  {w.name}: ready {w.ready()}", flush=True)
        results = {w.name: [] for w in workers}
        for r in range(repeats):
            if args.max_wait > 0:
                common.wait_for_quiet(max_wait=args.max_wait)
            for w in workers:
                results[w.name].append(w.run())
            print(f"  round {r + 1}/{repeats}: " + ", ".join(
                f"{w.name} {results[w.name][-1]['seconds']:.2f}s "
                f"(others {results[w.name][-1]['other_load']:.1f} cores)" for w in workers),
                flush=True)
        return {w.name: (w.info, results[w.name]) for w in workers}
    finally:
        for w in workers:
            w.close()


QUIET = 0.25


def _quiet_rounds(measured, repeats):
    """Rounds in which other processes used less than QUIET cores during every unit."""
    return [i for i in range(repeats)
            if all(runs[i]["other_load"] < QUIET for _, runs in measured.values())]


def _torch_available():
    try:
        import pytorch_metric_learning  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def default_out(skip_step, skip_epoch):
    """train_step for both halves, train_step_epoch for the epochs alone (`--skip-step`),
    train_step_step for the steps alone (`--skip-epoch`) (the name, without .json)."""
    if skip_step:
        return "train_step_epoch"
    return "train_step_step" if skip_epoch else "train_step"


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="train steps per timed unit")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--learners", type=int, default=4, help="K of the DnC candidates")
    parser.add_argument("--candidates", nargs="+", default=None,
                        help=f"step candidates, any of {STEP_CANDIDATES} (default: all; "
                             f"--tiny: {TINY_CANDIDATES})")
    parser.add_argument("--epoch-candidates", nargs="+", default=None,
                        help="epoch candidates; the first two are compared (DnC over plain) "
                             f"(default: {EPOCH_CANDIDATES} + dnc_epoch+norecluster "
                             f"dnc_epoch+bank; --tiny: {EPOCH_CANDIDATES})")
    parser.add_argument("--skip-epoch", action="store_true", help="skip the epoch comparison")
    parser.add_argument("--skip-step", action="store_true", help="skip the step comparison")
    parser.add_argument("--max-wait", type=float, default=60.0,
                        help="seconds to wait before each round for other processes to go "
                             "quiet (0: never wait)")
    common.add_out_argument(parser, "train_step.json", note="; with --skip-step "
                            "train_step_epoch.json, with --skip-epoch train_step_step.json; "
                            "another --learners, --candidates or --epoch-candidates is added "
                            "to the name")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.skip_step and args.skip_epoch:
        parser.error("--skip-step and --skip-epoch together leave nothing to measure")
    default = common.default_name(default_out(args.skip_step, args.skip_epoch), args, parser,
                                  ["learners", "candidates", "epoch_candidates"])
    if args.tiny and not args.worker:
        args.steps, args.repeats, args.max_wait = 2, 1, 0.0
    if args.candidates is None:
        args.candidates = list(TINY_CANDIDATES if args.tiny else STEP_CANDIDATES)
    if args.epoch_candidates is None:
        args.epoch_candidates = list(EPOCH_CANDIDATES) + (
            [] if args.tiny else ["dnc_epoch+norecluster", "dnc_epoch+bank"])
    args.out = common.resolve_out(args.out, default, args.tiny)
    return args


def _last_of_rounds(runs, key):
    """The last value of `key` (a list per round: a unit's re-clusterings) in each round that
    has one."""
    return [r[key][-1] for r in runs if r.get(key)]


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args)

    results = {"settings": {"steps_per_unit": args.steps, "repeats": args.repeats,
                            "learners": args.learners, "batch": BATCH}}
    if not args.skip_step:
        names = [n for n in args.candidates
                 if _parse(n)[0] != "torch_pml" or _torch_available()]
        skipped = {n: TORCH_MISSING for n in args.candidates if n not in names}
        if skipped:
            print(f"{', '.join(skipped)}: {TORCH_MISSING}")
        print(f"Step: {args.repeats} rounds of {args.steps} steps, batch {BATCH}", flush=True)
        measured = measure(names, args.repeats, args)
        quiet = _quiet_rounds(measured, args.repeats)
        step = {}
        for name, (info, runs) in measured.items():
            seconds = [r["seconds"] for r in runs]
            quiet_seconds = [seconds[i] for i in quiet]
            step[name] = {**common.summary(seconds),
                          "other_load": [r["other_load"] for r in runs],
                          "quiet_images_per_s": (info["images_per_unit"] / common.summary(
                              quiet_seconds)["median_s"]) if quiet else None,
                          "images_per_s": info["images_per_unit"] / common.summary(seconds)[
                              "median_s"],
                          "ms_per_step": 1000 * common.summary(seconds)["median_s"] / args.steps,
                          "cpu_ms_per_step": 1000 * common.summary(
                              [r["cpu_seconds"] for r in runs])["median_s"] / args.steps,
                          **{k: v for k, v in info.items() if k != "ready"}}
        ratios = {}
        pairs = [("dnc", "torch_pml"), ("keras", "torch_pml"), ("dnc", "keras"),
                 ("keras+xla", "keras"), ("dnc+xla", "dnc"), ("dnc", "dnc+unfused_bn")]
        pairs += [(n, "dnc") for n in measured
                  if n.startswith("dnc+") and {(n, "dnc"), ("dnc", n)}.isdisjoint(pairs)]
        # Each PyTorch candidate against the Keras ones built with the same options.
        pairs += [(a + n[len("torch_pml"):], n) for n in measured
                  if n.startswith("torch_pml+") and "@" not in n for a in ("dnc", "keras")]
        for a, b in pairs:
            if a in measured and b in measured:
                # Speed ratio a/b = time(b) / time(a), per round.
                tb, ta = ([r["seconds"] for r in measured[n][1]] for n in (b, a))
                ratios[f"{a}/{b}"] = common.paired_ratios(tb, ta)
                if quiet:
                    ratios[f"{a}/{b}"]["quiet_rounds"] = common.paired_ratios(
                        [tb[i] for i in quiet], [ta[i] for i in quiet])
        # A candidate run in several processes ("torch_pml", "torch_pml@2") is credited, round
        # by round, with its fastest process.
        for base in {n.split("@")[0] for n in measured if "@" in n}:
            replicas = [n for n in measured if n.split("@")[0] == base]
            best = [min(measured[n][1][i]["seconds"] for n in replicas)
                    for i in range(args.repeats)]
            for a in (keras + base[len("torch_pml"):] for keras in ("dnc", "keras")):
                if a in measured:
                    ta = [r["seconds"] for r in measured[a][1]]
                    ratios[f"{a}/{base} (fastest of {len(replicas)} processes)"] = {
                        **common.paired_ratios(best, ta),
                        **({"quiet_rounds": common.paired_ratios(
                            [best[i] for i in quiet], [ta[i] for i in quiet])} if quiet else {})}
        results["step"] = {"candidates": step, "speed_ratios": ratios, "quiet_rounds": quiet}
        if skipped:
            results["step"]["skipped"] = skipped
        rows = [(n, s["images_per_s"], s["quiet_images_per_s"] or "-", s["ms_per_step"],
                 s["cpu_ms_per_step"], s["spread"]) for n, s in step.items()]
        print(common.table(rows, ["candidate", "images/s (median)", "images/s (quiet rounds)",
                                  "ms/step", "CPU ms/step", "spread"]))
        print(f"quiet rounds (others < {QUIET} cores throughout): {len(quiet)} of {args.repeats}")
        for k, v in ratios.items():
            extra = (f"; quiet rounds {v['quiet_rounds']['median']:.3f}"
                     if "quiet_rounds" in v else "")
            print(f"speed {k}: {v['median']:.3f} (per-round {v['min']:.3f}..{v['max']:.3f}"
                  f"{extra})")

    if not args.skip_epoch:
        print(f"Epoch: {args.repeats} rounds of 2 epochs (one re-clustering each)", flush=True)
        measured = measure(args.epoch_candidates, args.repeats, args)
        dnc_name, plain_name = args.epoch_candidates[:2]
        epoch = {}
        for name, (info, runs) in measured.items():
            seconds = [r["seconds"] for r in runs]
            epoch[name] = {**common.summary(seconds),
                           "other_load": [r["other_load"] for r in runs],
                           **{k: v for k, v in info.items() if k != "ready"}}
            embedded = _last_of_rounds(runs, "recluster_embedded_images")
            if embedded:
                epoch[name]["recluster_embedded_images"] = embedded
        dnc_runs = measured[dnc_name][1]
        recluster = _last_of_rounds(dnc_runs, "recluster_seconds")
        ratio = common.paired_ratios([r["seconds"] for r in dnc_runs],
                                     [r["seconds"] for r in measured[plain_name][1]])
        share = common.paired_ratios(recluster, [r["seconds"] for r in dnc_runs])
        epoch[dnc_name]["recluster"] = common.summary(recluster) if recluster else None
        results["epoch"] = {"candidates": epoch, "time_ratio_dnc_over_keras": ratio,
                            "recluster_share_of_dnc_time": share, "target": 1.10,
                            "met": ratio["median"] <= 1.10}
        for name in measured:
            if name not in (dnc_name, plain_name):
                other = common.paired_ratios([r["seconds"] for r in measured[name][1]],
                                             [r["seconds"] for r in measured[plain_name][1]])
                results["epoch"][f"time_ratio_{name}_over_keras"] = other
                runs = measured[name][1]
                seconds = _last_of_rounds(runs, "recluster_seconds")
                note = ""
                if seconds:
                    own = common.paired_ratios(seconds, [r["seconds"] for r in runs])
                    embedded = epoch[name]["recluster_embedded_images"]
                    results["epoch"][f"recluster_share_of_{name}_time"] = own
                    total = measured[name][0]["train_images"]
                    note = (f"; re-clustering {own['median']:.1%} of its time, embedding "
                            f"{int(statistics.median(embedded))} of {total} images")
                print(f"{name} / plain Keras epoch: {other['median']:.3f} "
                      f"(per-round {other['min']:.3f}..{other['max']:.3f}){note}")
        print(common.table([(n, e["median_s"] / 2, e["spread"]) for n, e in epoch.items()],
                           ["candidate", "s/epoch (median)", "spread"]))
        print(f"DnC epoch / plain Keras epoch: {ratio['median']:.3f} "
              f"(per-round {ratio['min']:.3f}..{ratio['max']:.3f}; target <= 1.10); "
              f"re-clustering {share['median']:.1%} of the DnC time")
    return common.write_results(results, args.out, argv, __file__, name="train_step")


if __name__ == "__main__":
    main()
