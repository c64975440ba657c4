"""The main job: a TrainConfig in, a run folder out (config, checkpoint, metrics, plots, logs)."""

import contextlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from dnc_keras import backbones, datasets
from dnc_keras.batches import training_batches
from dnc_keras.callbacks import DnCScheduleCallback, FiniteCheckpoint, RetrievalEvaluation
from dnc_keras.clustering import max_learners
from dnc_keras.evaluation import raw_pixel_baseline
from dnc_keras.layers import SubspaceMasks
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.training import distributed
from dnc_keras.training.plan import build_plan, build_schedule, evaluate
from dnc_keras_cli.options import LOSSES, resolve

RECALL_KS = (1, 2, 4, 8)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps the last good checkpoint."""


def build_loss(config):
    """The learner loss the config names (`dnc_keras_cli.options.LOSSES`), with its own default
    margin unless one is set."""
    loss = resolve(LOSSES, config.loss, "loss")
    if config.margin is None:
        return loss()
    return loss(**{loss.MARGIN_ARGUMENT: config.margin})



def build_model(config, input_shape, preprocessing=None):
    """DnCModel for the config: backbone -> embedding -> K subspaces, compiled; it carries the
    run's `Preprocessing` record."""
    weights = None if str(config.weights).lower() == "none" else config.weights
    backbone = backbones.build_backbone(config.backbone, input_shape, weights=weights)
    encoder = backbones.build_encoder(backbone, config.embedding_dim,
                                      freeze_bn_stats=config.backbone != "conv4")
    initial = 1 if config.progressive else config.learners
    subspaces = SubspaceMasks(config.embedding_dim, max_learners=config.learners,
                              mode=config.subspaces, initial_learners=initial)
    model = DnCModel(encoder, subspaces, weight_decay=config.weight_decay,
                     preprocessing=preprocessing)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, epsilon=1e-8),
                  loss=build_loss(config))
    return model


def load_data(config):
    """The dataset of a config: a MetricDataset, or a PathDataset for the benchmarks."""
    kwargs = {} if config.image_size is None else {"image_size": config.image_size}
    return datasets.load(config.dataset, data_dir=config.data_dir, seed=config.seed,
                         train_classes=config.train_classes, **kwargs)


def check_learners(config, y_train):
    """Fails early, naming the numbers, when the classes cannot support K learners."""
    limit = max_learners(y_train)
    if config.learners > limit:
        raise ValueError(f"learners must be <= {limit} for these {len(np.unique(y_train))} "
                         f"training classes (each cluster needs 2 classes with 2 images). "
                         f"Received: learners={config.learners}")


def run(config, verbose=1):
    """Trains, evaluates on the unseen classes and writes the run folder; returns the metrics.

    With `config.strategy`, trains with `dnc_keras.training.distributed.DistributedTrainer` and resumes
    from `<out>/checkpoints`; on several workers only the chief writes the run folder.
    """
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    strategy = distributed.make_strategy(config.strategy) if config.strategy else None
    chief = strategy is None or distributed.is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    run_dir = config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    # Other workers write what the chief writes (weights, logs) to a scratch folder instead.
    out = run_dir if chief else tempfile.mkdtemp(
        prefix=f"dnc-worker{distributed.task_id(strategy)}-")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)

    plan = build_plan(config)
    check_learners(config, plan.train_labels)
    with open(os.path.join(out, "preprocessing.json"), "w") as f:
        f.write(plan.preprocessing.to_json())
    sampler = ClusterBatchSampler(plan.train_labels, config.classes_per_batch,
                                  config.samples_per_class, seed=config.seed,
                                  steps_per_epoch=config.steps_per_epoch)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(config, plan.input_shape, plan.preprocessing)
    has_test = bool(plan.evaluations)
    checkpoint = FiniteCheckpoint(os.path.join(out, "checkpoint.weights.h5"), verbose=verbose)
    schedule_callback = DnCScheduleCallback(
        sampler, plan.train_images, schedule=build_schedule(config),
        cluster_on=config.cluster_on, seed=config.seed, backend=config.kmeans_backend,
        feature_source=config.recluster_features, verbose=verbose)
    callbacks = [schedule_callback]
    selection = None
    if plan.validation is not None:
        # Fair-comparison mode: the model is chosen on held-out training classes, so the test
        # classes are never looked at before the final evaluation.
        selection = RetrievalEvaluation(plan.validation.query, plan.validation.query_labels,
                                        every=config.eval_every or 1, ks=plan.recall_ks,
                                        nmi=False, log_dir=os.path.join(out, "logs"))
        best_path = os.path.join(out, "best.weights.h5")
        callbacks += [selection, keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_MAP@R", mode="max", save_best_only=True,
            save_weights_only=True)]
    elif has_test and config.eval_every and plan.evaluations[0].gallery is None:
        monitor = plan.evaluations[0]
        callbacks.append(RetrievalEvaluation(monitor.query, monitor.query_labels,
                                             every=config.eval_every, ks=plan.recall_ks,
                                             nmi=config.nmi, log_dir=os.path.join(out, "logs")))
    callbacks += [checkpoint, keras.callbacks.TensorBoard(os.path.join(out, "logs"))]

    start = time.perf_counter()
    dataset = training_batches(sampler, plan.image_source(_augmenter(config)))
    if strategy is None:
        history = model.fit(dataset, epochs=config.epochs, callbacks=callbacks,
                            verbose=verbose, shuffle=False)
    else:
        trainer = distributed.DistributedTrainer(
            model, sampler, dataset=dataset, strategy=strategy,
            checkpoint_dir=os.path.join(run_dir, "checkpoints"),
            checkpoint_every=config.checkpoint_every)
        history = trainer.fit(config.epochs, callbacks=callbacks, verbose=verbose if chief else 0)
    seconds = time.perf_counter() - start
    if checkpoint.nan_at is not None:
        epoch, batch = checkpoint.nan_at
        raise TrainingDiverged(
            f"loss became non-finite at epoch {epoch} batch {batch}; the last good checkpoint "
            f"is {checkpoint.filepath} (epoch {checkpoint.saved_epoch}). Lower the learning "
            "rate or check the data.")
    results = {"dataset": plan.name, "train_classes": int(len(np.unique(plan.train_labels))),
               "test_classes": max((len(np.unique(ev.query_labels)) for ev in plan.evaluations),
                                   default=0),
               "learners": config.learners, "epochs": config.epochs,
               "train_seconds": round(seconds, 1), "recall_ks": list(plan.recall_ks)}
    if strategy is not None:
        results["replicas"] = strategy.num_replicas_in_sync
        if trainer.restored_from:
            results["resumed_from"] = trainer.restored_from
    if not chief:
        shutil.rmtree(out, ignore_errors=True)
        return {**results, "role": "worker", "run_dir": run_dir}
    if plan.summary.get("skipped_files"):
        results["skipped_files"] = plan.summary["skipped_files"]
    if selection is not None:
        results["selection"] = _select_best(model, selection, best_path)
    model.save(os.path.join(out, "model.keras"))

    if has_test:
        metrics = evaluate(model, plan.evaluations, plan.recall_ks, nmi=config.nmi,
                           seed=config.seed)
        results["test"] = metrics["test"] if list(metrics) == ["test"] else metrics
    if has_test and plan.test_pixels is not None:
        results["raw_pixels"] = raw_pixel_baseline(*plan.test_pixels, ks=plan.recall_ks,
                                                   nmi=config.nmi)
    plot = plan.test_pixels if has_test and not plan.on_disk and config.plots else None
    _write_outputs(out, results, {**history.history, "dnc_actions": schedule_callback.outcomes},
                   plot, model, curves=config.plots)
    results["run_dir"] = out
    return results


def _select_best(model, selection, best_path):
    """Loads the weights of the epoch with the best validation MAP@R; says which it was."""
    scores = [(h["MAP@R"], h["epoch"]) for h in selection.history if np.isfinite(h["MAP@R"])]
    if not scores or not os.path.exists(best_path):
        return {"metric": "validation MAP@R", "epoch": None, "history": selection.history}
    value, epoch = max(scores, key=lambda s: (s[0], -s[1]))
    model.load_weights(best_path)
    return {"metric": "validation MAP@R", "epoch": int(epoch), "value": float(value),
            "history": selection.history}


def _augmenter(config):
    """`--augment`: the in-memory datasets' random rotation and shift (stateless, seeded)."""
    if not config.augment:
        return None
    from dnc_keras.augmentation import RandomAffine

    return RandomAffine()


def _write_outputs(out, results, history, plot, model, curves=True):
    from dnc_keras.training import plots

    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    curves_of = {k: [float(v) for v in vs] for k, vs in history.items() if k != "dnc_actions"}
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({**curves_of, "dnc_actions": history.get("dnc_actions", [])}, f, indent=2)
    if curves:
        plots.training_curves(curves_of, os.path.join(out, "training_curves.png"))
    # On-disk test sets (up to 60k images) are not embedded a second time just for the plot.
    if plot is not None:
        images, labels = plot
        plots.embedding_2d(model.embed(images), labels, os.path.join(out, "test_embeddings.png"))


def format_results(results):
    """The metrics table printed at the end of a run: one row per evaluation of the protocol
    (VehicleID's three lists), the learned embedding next to raw pixels where they apply."""
    if results.get("role") == "worker":
        return f"Worker done; the chief writes the run folder {results['run_dir']}."
    if "test" not in results:
        return f"Trained on all {results['train_classes']} classes; no test split to evaluate."
    test = results["test"]
    rows = [("dnc_keras", test)] if "MAP@R" in test else \
        [(f"dnc_keras {name}", metrics) for name, metrics in test.items()]
    if "raw_pixels" in results:
        rows.append(("raw pixels", results["raw_pixels"]))
    ks = results.get("recall_ks", RECALL_KS)
    names = [n for n in [f"R@{k}" for k in ks] + ["MAP@R", "NMI"] if n in rows[0][1]]
    width = max(12, max(len(label) for label, _ in rows) + 1)
    lines = [f"Retrieval on {results['test_classes']} unseen classes of {results['dataset']}:",
             f"{'':{width}s}" + "".join(f"{n:>8s}" for n in names)]
    for label, metrics in rows:
        lines.append(f"{label:{width}s}" + "".join(f"{metrics[n]:8.3f}" for n in names))
    selection = results.get("selection")
    if selection and selection.get("epoch"):
        lines.append(f"Model selected at epoch {selection['epoch']} by {selection['metric']} "
                     f"({selection['value']:.3f}) on held-out training classes.")
    return "\n".join(lines)
