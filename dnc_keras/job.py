"""The main job: a TrainConfig in, a run folder out (config, checkpoint, metrics, plots, logs)."""

import json
import os
import time

import keras
import numpy as np

from dnc_keras import backbones, datasets, losses
from dnc_keras.callbacks import FiniteCheckpoint, RetrievalEvaluation, dnc_callbacks
from dnc_keras.clustering import max_learners
from dnc_keras.evaluation import raw_pixel_baseline, retrieval_metrics
from dnc_keras.layers import SubspaceMasks
from dnc_keras.model import DnCModel
from dnc_keras.sampling import ClusterBatchSampler

RECALL_KS = (1, 2, 4, 8)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps the last good checkpoint."""


def build_loss(config):
    """The learner loss named in the config, with its own default margin unless one is set."""
    margin = {} if config.margin is None else {"margin": config.margin}
    if config.loss == "margin":
        return losses.MarginLoss(**({} if config.margin is None else {"alpha": config.margin}))
    if config.loss == "triplet_hard":
        return losses.TripletHardLoss(**margin)
    if config.loss == "triplet_semihard":
        return losses.TripletSemiHardLoss(**margin)
    return losses.ContrastiveLoss(**margin)


def build_model(config, input_shape):
    """DnCModel for the config: backbone -> embedding -> K subspaces, compiled."""
    backbone = backbones.build_backbone(config.backbone, input_shape, weights=config.weights)
    encoder = backbones.build_encoder(backbone, config.embedding_dim,
                                      freeze_bn_stats=config.backbone != "conv4")
    initial = 1 if config.progressive else config.learners
    subspaces = SubspaceMasks(config.embedding_dim, max_learners=config.learners,
                              mode=config.subspaces, initial_learners=initial)
    model = DnCModel(encoder, subspaces, weight_decay=config.weight_decay)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, epsilon=1e-8),
                  loss=build_loss(config))
    return model


def load_data(config):
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
    """Trains, evaluates on the unseen classes and writes the run folder; returns the metrics."""
    keras.utils.set_random_seed(config.seed)
    out = config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)

    data = load_data(config)
    check_learners(config, data.y_train)
    sampler = ClusterBatchSampler(data.y_train, config.classes_per_batch,
                                  config.samples_per_class, seed=config.seed,
                                  steps_per_epoch=config.steps_per_epoch)
    model = build_model(config, data.x_train.shape[1:])
    has_test = len(data.y_test) > 0
    checkpoint = FiniteCheckpoint(os.path.join(out, "checkpoint.weights.h5"), verbose=verbose)
    callbacks = dnc_callbacks(sampler, data.x_train, config.learners,
                              progressive=config.progressive, period=config.recluster_period,
                              conquer_epoch=config.conquer_epoch, conquer_mode=config.conquer_mode,
                              cluster_on=config.cluster_on, seed=config.seed,
                              backend=config.kmeans_backend, verbose=verbose)
    if has_test and config.eval_every:
        callbacks.append(RetrievalEvaluation(data.x_test, data.y_test, every=config.eval_every,
                                             ks=RECALL_KS, log_dir=os.path.join(out, "logs")))
    callbacks += [checkpoint, keras.callbacks.TensorBoard(os.path.join(out, "logs"))]

    start = time.perf_counter()
    history = model.fit(sampler.as_dataset(data.x_train, augment=_augmenter(config)),
                        epochs=config.epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
    seconds = time.perf_counter() - start
    if checkpoint.nan_at is not None:
        epoch, batch = checkpoint.nan_at
        raise TrainingDiverged(
            f"loss became non-finite at epoch {epoch} batch {batch}; the last good checkpoint "
            f"is {checkpoint.filepath} (epoch {checkpoint.saved_epoch}). Lower the learning "
            "rate or check the data.")
    model.save(os.path.join(out, "model.keras"))

    results = {"dataset": data.name, "train_classes": int(len(np.unique(data.y_train))),
               "test_classes": int(len(np.unique(data.y_test))) if has_test else 0,
               "learners": config.learners, "epochs": config.epochs,
               "train_seconds": round(seconds, 1)}
    if has_test:
        test_embeddings = model.embed(data.x_test)
        results["test"] = retrieval_metrics(test_embeddings, data.y_test, ks=RECALL_KS,
                                            seed=config.seed)
        results["raw_pixels"] = raw_pixel_baseline(data.x_test, data.y_test, ks=RECALL_KS)
    _write_outputs(out, results, history.history, data, model if has_test else None)
    results["run_dir"] = out
    return results


def _augmenter(config):
    if not config.augment:
        return None
    layers = keras.Sequential([keras.layers.RandomRotation(0.03, fill_mode="constant"),
                               keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant")])
    return lambda images: layers(images, training=True)


def _write_outputs(out, results, history, data, model):
    from dnc_keras import plots

    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({k: [float(v) for v in vs] for k, vs in history.items()}, f, indent=2)
    plots.training_curves(history, os.path.join(out, "training_curves.png"))
    if model is not None:
        plots.embedding_2d(model.embed(data.x_test), data.y_test,
                           os.path.join(out, "test_embeddings.png"))


def format_results(results):
    """The metrics table printed at the end of a run: learned embedding next to raw pixels."""
    if "test" not in results:
        return f"Trained on all {results['train_classes']} classes; no test split to evaluate."
    names = [f"R@{k}" for k in RECALL_KS] + ["MAP@R", "NMI"]
    lines = [f"Retrieval on {results['test_classes']} unseen classes of {results['dataset']}:",
             f"{'':12s}" + "".join(f"{n:>8s}" for n in names)]
    for label, key in (("dnc_keras", "test"), ("raw pixels", "raw_pixels")):
        lines.append(f"{label:12s}" + "".join(f"{results[key][n]:8.3f}" for n in names))
    return "\n".join(lines)
