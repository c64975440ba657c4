"""The main job: a TrainConfig in, a run folder out (config, checkpoint, metrics, plots, logs)."""

import contextlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from dnc_keras import backbones, datasets
from dnc_keras.batches import training_batches
from dnc_keras.callbacks import (DivergenceGuard, DnCScheduleCallback, RetrievalEvaluation,
                                 with_cluster_epoch_progbar)
from dnc_keras.clustering import max_learners
from dnc_keras.evaluation import raw_pixel_baseline
from dnc_keras.feature_bank import FeatureBank
from dnc_keras.files import atomic_path
from dnc_keras.layers import SubspaceMasks
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler
from dnc_keras.training import distributed
from dnc_keras.training.checkpoints import (CHECKPOINTS, BestWeights, EpochCheckpoint,
                                           TrainingState)
from dnc_keras.training.plan import build_plan, build_schedule, evaluate
from dnc_keras.training.run_folder import RunFolder, provenance, split_hash
from dnc_keras_cli.options import LOSSES, resolve

RECALL_KS = (1, 2, 4, 8)


class TrainingDiverged(RuntimeError):
    """Embeddings, loss or gradients became non-finite; the run folder keeps the last good
    checkpoint and no model is written."""


def build_loss(config):
    """The learner loss the config names (`dnc_keras_cli.options.LOSSES`), with its own default
    margin unless one is set."""
    loss = resolve(LOSSES, config.loss, "loss")
    kwargs = {"learn_beta": True} if config.learn_beta else {}
    if config.margin is not None:
        kwargs[loss.MARGIN_ARGUMENT] = config.margin
    return loss(**kwargs)



def build_model(config, input_shape, preprocessing=None):
    """DnCModel for the config: backbone -> embedding -> K subspaces, compiled; it carries the
    run's `Preprocessing` record. With `mixed_precision` its layers are built under Keras's
    "mixed_float16" policy (float16 compute; each layer keeps it, the global policy is
    restored after) and the optimizer scales the loss."""
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _build_model(config, input_shape, preprocessing)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_model(config, input_shape, preprocessing):
    weights = None if str(config.weights).lower() == "none" else config.weights
    # A backbone trained from scratch (conv4) has a normalisation setting and trains its
    # BatchNorm statistics; a pretrained one has none (TrainConfig) and keeps them frozen.
    trains_statistics = config.normalization is not None
    extra = {"normalization": config.normalization} if trains_statistics else {}
    backbone = backbones.build_backbone(config.backbone, input_shape, weights=weights, **extra)
    encoder = backbones.build_encoder(backbone, config.embedding_dim,
                                      freeze_bn_stats=not trains_statistics)
    initial = 1 if config.progressive else config.learners
    subspaces = SubspaceMasks(config.embedding_dim, max_learners=config.learners,
                              mode=config.subspaces, initial_learners=initial,
                              inference=config.inference_embedding)
    model = DnCModel(encoder, subspaces, weight_decay=config.weight_decay,
                     mask_weight_decay=config.mask_weight_decay, preprocessing=preprocessing)
    optimizer = keras.optimizers.Adam(config.learning_rate, epsilon=1e-8)
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=build_loss(config))
    return model


def load_data(config):
    """The dataset of a config: a MetricDataset, or a PathDataset for the benchmarks."""
    kwargs = {} if config.image_size is None else {"image_size": config.image_size}
    return datasets.load(config.dataset, data_dir=config.data_dir, seed=config.seed,
                         train_classes=config.train_classes, **kwargs)


def check_learners(config, y_train):
    """Fails early, stating the counting rule, when the training classes cannot support K.

    Every learner's batches need 2 classes with at least 2 images (positives and negatives),
    and k-means keeps a class in one cluster, so K learners need 2K such classes. Passing this
    does not guarantee that every division finds an acceptable split; when one does not, the
    schedule keeps the previous clusters and records it (`DnCScheduleCallback`).
    """
    classes = len(np.unique(y_train))
    usable = classes - int(np.sum(np.unique(y_train, return_counts=True)[1] < 2))
    limit = max_learners(y_train)
    if limit == 0:
        raise ValueError(f"the training split has {classes} class(es), {usable} with at least 2 "
                         "images; training needs at least 2 such classes (the standard split "
                         "trains on half of the classes: give more classes, or "
                         "--train-classes all)")
    if config.learners > limit:
        raise ValueError(f"learners={config.learners} needs {2 * config.learners} training "
                         f"classes with at least 2 images (2 per learner); the training split "
                         f"has {usable} of {classes}, so learners must be <= {limit}")


def run(config, verbose=1, overwrite=False):
    """Trains, evaluates on the unseen classes and writes the run folder; returns the metrics.

    The run's inputs (data, classes, K) are checked before anything is written. An unfinished
    run in `config.out` with the same settings resumes from its last checkpoint (model.fit or,
    with `config.strategy`, `DistributedTrainer`); a finished one is refused unless
    `overwrite`. On several workers only the chief writes the run folder.

    Raises:
        TrainingDiverged: a step's embeddings, loss or gradients were not finite; the run folder
            keeps its last good checkpoint and no model is written.
    """
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    strategy = distributed.make_strategy(config.strategy) if config.strategy else None
    chief = strategy is None or distributed.is_chief(strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    folder = RunFolder(config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")),
                       overwrite=overwrite)
    try:
        return _run_in(folder, config, strategy, chief, verbose)
    finally:
        folder.release()  # the folder's lock, taken when the chief claims it


def _run_in(folder, config, strategy, chief, verbose):
    """`run` in its folder: the chief claims it once the inputs are checked, then trains,
    evaluates and writes."""
    plan = build_plan(config)
    check_learners(config, plan.train_labels)
    if chief:
        resuming = folder.claim(config.to_dict())
        folder.write_text("preprocessing.json", plan.preprocessing.to_json())
        folder.record_provenance(provenance(config.to_dict(), split_hash(
            plan.train_paths if plan.on_disk else plan.train_images, plan.train_labels)),
            resuming)
    # Other workers write what the chief writes (logs) to a scratch folder instead.
    out = folder.path if chief else tempfile.mkdtemp(
        prefix=f"dnc-worker{distributed.task_id(strategy)}-")
    sampler = ClusterBatchSampler(plan.train_labels, config.classes_per_batch,
                                  config.samples_per_class, seed=config.seed,
                                  steps_per_epoch=config.steps_per_epoch,
                                  order=config.batch_order, epoch_length=config.epoch_length)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(config, plan.input_shape, plan.preprocessing)
    if config.recluster_features == "training" and strategy is None:
        # The bank is part of the state a resumed run restores: it exists before the restore.
        model.attach_feature_bank(FeatureBank(len(plan.train_labels), int(
            model.embed(plan.train_images[:1], output="features").shape[1])))
    checkpoints = os.path.join(folder.path, CHECKPOINTS)
    dataset = training_batches(sampler, plan.image_source(_augmenter(config)))
    trainer = None
    if strategy is None:
        state = TrainingState(model, sampler, checkpoints)
    else:
        trainer = distributed.DistributedTrainer(
            model, sampler, dataset=dataset, strategy=strategy, checkpoint_dir=checkpoints,
            checkpoint_every=config.checkpoint_every, record=lambda *logs: run_record(*logs))
        state = trainer.state
    restored = state.restore()
    start_epoch, start_step, record = restored or (0, 0, {})
    if restored and chief and verbose:
        into = f", {start_step} steps into the next" if start_step else ""
        print(f"Resuming {folder.path}: {start_epoch} of {config.epochs} epochs done{into} "
              f"({os.path.basename(state.restored_from)})", flush=True)
    has_test = bool(plan.evaluations) and config.test_evaluation
    guard = DivergenceGuard(verbose=verbose)
    schedule_callback = DnCScheduleCallback(
        sampler, plan.train_images, schedule=build_schedule(config),
        cluster_on=config.cluster_on, seed=config.seed, backend=config.kmeans_backend,
        feature_source=config.recluster_features,
        freeze_backbone_on_recluster=config.freeze_backbone_on_recluster,
        recluster_before_divide=config.recluster_before_divide, verbose=verbose)
    schedule_callback.outcomes = list(record.get("outcomes", []))
    callbacks = [schedule_callback]
    selection = best = None
    if plan.validation is not None:
        # Fair-comparison mode: the model is chosen on held-out training classes, so the test
        # classes are never looked at before the final evaluation.
        selection = RetrievalEvaluation(plan.validation.query, plan.validation.query_labels,
                                        every=config.eval_every or 1, ks=plan.recall_ks,
                                        nmi=False, log_dir=os.path.join(out, "logs"))
        selection.history = list(record.get("selection", []))
        best_path = os.path.join(out, "best.weights.h5")
        # Resumed: the best so far stays the one to beat.
        best = BestWeights(best_path, best=max((h["MAP@R"] for h in selection.history),
                                               default=-np.inf))
        callbacks += [selection, best]
    elif has_test and config.eval_every and plan.evaluations[0].gallery is None:
        monitor = plan.evaluations[0]
        callbacks.append(RetrievalEvaluation(monitor.query, monitor.query_labels,
                                             every=config.eval_every, ks=plan.recall_ks,
                                             nmi=config.nmi, log_dir=os.path.join(out, "logs")))
    # Per-epoch logs of the whole run, the resumed part included: checkpoints store them.
    history = {k: list(v) for k, v in record.get("history", {}).items()}
    seconds_before = float(record.get("seconds", 0.0))
    start = time.perf_counter()

    def run_record(epoch=None, logs=None):
        """What a checkpoint stores of the run: per-epoch logs, actions, selection, seconds."""
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        return {"history": history, "outcomes": schedule_callback.outcomes,
                "selection": selection.history if selection is not None else [],
                "seconds": seconds_before + time.perf_counter() - start}

    callbacks += [guard, keras.callbacks.TensorBoard(os.path.join(out, "logs"))]
    if trainer is None:
        callbacks.append(EpochCheckpoint(state, run_record))
        fit_epochs(model, dataset, config.epochs, start_epoch, callbacks, verbose)
    else:
        trainer.fit(config.epochs, callbacks=callbacks, verbose=verbose if chief else 0,
                    start=(start_epoch, start_step))
    seconds = seconds_before + time.perf_counter() - start
    diverged = guard.diverged_at or (trainer.nan_at if trainer is not None else None)
    if diverged is not None or not _finite_weights(model):
        where = f"epoch {diverged[0]} step {diverged[1]}" if diverged else "the last epoch"
        last = state.manager.latest_checkpoint if state.manager else None
        raise TrainingDiverged(
            f"training diverged at {where}: embeddings, loss or gradients became non-finite; "
            f"no model was written, the last good checkpoint is "
            f"{last or 'none (it diverged in the first epoch)'}. Lower the learning rate or "
            "check the data, then run again with --overwrite.")
    results = {"dataset": plan.name, "train_classes": int(len(np.unique(plan.train_labels))),
               "test_classes": max((len(np.unique(ev.query_labels)) for ev in plan.evaluations),
                                   default=0),
               "learners": config.learners, "epochs": config.epochs,
               "train_seconds": round(seconds, 1), "recall_ks": list(plan.recall_ks)}
    if restored:
        results["resumed_from"] = {"checkpoint": state.restored_from, "epoch": start_epoch,
                                   "step": start_step}
    if strategy is not None:
        results["replicas"] = strategy.num_replicas_in_sync
    if not chief:
        shutil.rmtree(out, ignore_errors=True)
        return {**results, "role": "worker", "run_dir": folder.path}
    if plan.summary.get("skipped_files"):
        results["skipped_files"] = plan.summary["skipped_files"]
    if selection is not None:
        results["selection"] = _select_best(model, selection, best_path)
    if model.margin_betas is not None:
        # The margin loss's learned boundaries: one per learner, the conquered embedding's last.
        results["margin_betas"] = [round(float(b), 4) for b in model.margin_betas.numpy()]
    with atomic_path(folder.file("model.keras")) as tmp:
        model.save(tmp)

    if has_test:
        metrics = evaluate(model, plan.evaluations, plan.recall_ks, nmi=config.nmi,
                           seed=config.seed)
        results["test"] = metrics["test"] if list(metrics) == ["test"] else metrics
    if has_test and plan.test_pixels is not None:
        results["raw_pixels"] = raw_pixel_baseline(*plan.test_pixels, ks=plan.recall_ks,
                                                   nmi=config.nmi)
    plot = plan.test_pixels if has_test and not plan.on_disk and config.plots else None
    _write_outputs(folder, results, {**history, "dnc_actions": schedule_callback.outcomes},
                   plot, model, curves=config.plots)
    results["run_dir"] = folder.path
    return results


def fit_epochs(model, dataset, epochs, initial_epoch=0, callbacks=(), verbose=1):
    """`model.fit` from `initial_epoch` to `epochs`, also for the papers' epoch.

    Keras's `fit` fixes an epoch's length for the whole call. The papers' epoch changes length
    with every re-clustering (a `DnCScheduleCallback` whose sampler has `epoch_length`
    largest or smallest), so it trains one call per epoch, with the same callback objects: the
    schedule's actions for the epoch run first, and fit is given the length they leave (inside
    fit the callback sees them done). A dataset of unknown length instead would cost each
    epoch one more optimizer iteration (Keras counts the step that finds the data exhausted).
    A callback that stops training stops the run.
    """
    schedule = next((c for c in callbacks if isinstance(c, DnCScheduleCallback)
                     and c.sampler.epoch_length != "fixed"), None)
    if schedule is None:
        model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                  verbose=verbose, shuffle=False)
        return
    callbacks = with_cluster_epoch_progbar(callbacks, schedule.sampler, epochs, verbose)
    schedule.set_model(model)
    schedule.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        schedule.on_epoch_begin(epoch)
        model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks,
                  verbose=verbose, shuffle=False, steps_per_epoch=schedule.sampler.steps)
        if model.stop_training:
            return


def _finite_weights(model):
    return all(np.isfinite(w).all() for w in model.get_weights())


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


def _write_outputs(folder, results, history, plot, model, curves=True):
    """history.json, the plots, then metrics.json last: its presence marks a finished run."""
    from dnc_keras.evaluation import per_class_recall
    from dnc_keras.training import plots, tensorboard_logs

    curves_of = {k: [float(v) for v in vs] for k, vs in history.items() if k != "dnc_actions"}
    folder.write_json("history.json", {**curves_of,
                                       "dnc_actions": history.get("dnc_actions", [])})
    if curves:  # a count of diverged steps is not a curve: it is 0 in a run that finishes
        with atomic_path(folder.file("training_curves.png")) as tmp:
            plots.training_curves({k: v for k, v in curves_of.items() if k != "nonfinite"},
                                  tmp)
    actions = history.get("dnc_actions", [])
    if curves:
        with atomic_path(folder.file("clusters.png")) as tmp:
            plots.clusters(actions, tmp)
        tensorboard_logs.write_cluster_scalars(folder.file("logs"), actions)
    # On-disk test sets (up to 60k images) are not embedded a second time just for the plots.
    if plot is not None:
        images, labels = plot
        embeddings = model.embed(images)
        with atomic_path(folder.file("test_embeddings.png")) as tmp:
            plots.embedding_2d(embeddings, labels, tmp)
        with atomic_path(folder.file("neighbours.png")) as tmp:
            plots.neighbour_grid(images, labels, embeddings, tmp)
        with atomic_path(folder.file("class_recall.png")) as tmp:
            plots.class_recall(per_class_recall(embeddings, labels), tmp)
        tensorboard_logs.write_projector(folder.file("logs"), embeddings, labels, images)
    folder.write_json("metrics.json", results)


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
