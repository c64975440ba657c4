"""What a run trains and evaluates on: the data plan of a TrainConfig and its dataset's protocol.

A `DataPlan` hides where the images live. The small datasets are arrays in memory; the
benchmarks stream from disk: `dnc_keras.images.ImageFiles` for everything that embeds,
`dnc_keras.batches.FileSource` for training batches. Either way the plan gives the training labels and
images, the evaluations of the dataset's protocol (leave-one-out on a test split; In-shop's
queries against its gallery; one per VehicleID test list) with their Recall@K, and, in the
fair-comparison mode, a validation split made of held-out training classes (Musgrave et al.,
"A Metric Learning Reality Check", 2020): model selection never sees a test class.

`describe` turns a config and its plan into the text `dnc-keras train --dry-run` prints.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from dnc_keras import datasets
from dnc_keras.clustering import max_learners
from dnc_keras.datasets._base import MIN_IMAGES_PER_CLASS
from dnc_keras.evaluation import evaluate as evaluate_protocol

# The small datasets' R@K, the CUB/Cars set (method.md, section 7).
RECALL_KS = (1, 2, 4, 8)
DEFAULT_IMAGE_SIZE = 224
# The held-out validation classes are drawn with this fixed seed, not the run's, so that runs
# with different seeds select their models on the same classes.
VALIDATION_SEED = 0


@dataclasses.dataclass
class Evaluation:
    """One retrieval evaluation: `query` searches `gallery`, or itself leave-one-out when
    `gallery` is None. Images are arrays [N, H, W, C] or `ImageFiles`."""

    name: str
    query: Any
    query_labels: np.ndarray
    gallery: Any = None
    gallery_labels: np.ndarray | None = None

    @property
    def protocol(self) -> str:
        return "leave-one-out" if self.gallery is None else "query vs gallery"


@dataclasses.dataclass
class DataPlan:
    """The data of a run.

    Args:
        name: dataset key.
        train_images: what the model embeds for re-clustering: an array or `ImageFiles`.
        train_labels: int labels [N], aligned with `train_images`.
        input_shape: (H, W, C) the model takes.
        recall_ks: the K of Recall@K of the protocol.
        evaluations: the protocol's evaluations on the test classes.
        validation: the held-out training classes (fair-comparison mode), or None.
        train_paths: the training files (on-disk datasets), else None.
        preprocessing: the run's `Preprocessing` record (`dnc_keras.preprocessing`): how every
            image, in training, evaluation and serving, becomes model input.
        contents: the training files' bytes when cached in memory, else None.
        summary: facts for the dry run and metrics.json (sizes, skipped files).
    """

    name: str
    train_images: Any
    train_labels: np.ndarray
    input_shape: tuple
    recall_ks: tuple
    evaluations: list
    validation: Evaluation | None = None
    train_paths: np.ndarray | None = None
    preprocessing: Any = None
    contents: Any = None
    summary: dict = dataclasses.field(default_factory=dict)
    test_pixels: Any = None
    augmentation: Any = None

    @property
    def on_disk(self) -> bool:
        return self.train_paths is not None

    def image_source(self, augment=None):
        """The training images as an image source of `dnc_keras.batches`: files decoded by the
        record and cropped at random, or arrays in memory (augmented by `augment`)."""
        from dnc_keras import batches

        if self.on_disk:
            return batches.FileSource(self.train_paths, self.preprocessing,
                                      augmentation=self.augmentation, contents=self.contents)
        return batches.ArraySource(self.train_images, augment)


def holdout_classes(labels, fraction, seed=VALIDATION_SEED):
    """(train mask, validation mask): `fraction` of the classes, at least 2, drawn at random.

    Raises:
        ValueError: fewer than 2 classes would be left on either side.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_val = max(2, int(round(fraction * len(classes))))
    if len(classes) - n_val < 2:
        raise ValueError(f"validation_classes={fraction} holds out {n_val} of "
                         f"{len(classes)} training classes, leaving fewer than 2 to train on")
    held = np.random.default_rng(seed).choice(classes, n_val, replace=False)
    val = np.isin(labels, held)
    return ~val, val


def _relabel(labels):
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int32)


def _drop_small_classes(split, name):
    counts = np.bincount(split.labels, minlength=len(split.class_names))
    small = counts[split.labels] < MIN_IMAGES_PER_CLASS
    if small.any():
        lost = [split.class_names[c] for c in np.unique(split.labels[small])]
        warnings.warn(f"Dropping {len(lost)} {name} class(es) left with fewer than "
                      f"{MIN_IMAGES_PER_CLASS} images (e.g. {lost[0]!r}): metric learning needs "
                      "positive pairs", stacklevel=3)
        split = split.subset(~small)
    return split


def build_plan(config, scan=None) -> DataPlan:
    """The DataPlan of a TrainConfig.

    Args:
        config: a `TrainConfig`.
        scan: decode every image once and skip unreadable ones (on-disk datasets). Defaults to
            `None`: `config.check_images`. The dry run passes `False`.
    """
    if datasets.is_benchmark(config.dataset):
        return _disk_plan(config, config.check_images if scan is None else scan)
    return _memory_plan(config)


def load_memory_dataset(config):
    """The in-memory MetricDataset of a config (its loader's record, `color_mode` applied)."""
    kwargs = {} if config.image_size is None else {"image_size": config.image_size}
    name = datasets.canonical_name(config.dataset)
    from_files = name in ("omniglot", "folder")  # read from a folder into memory
    if config.color_mode is not None:
        if from_files:
            kwargs["color_mode"] = config.color_mode
        elif config.color_mode != "grayscale":
            raise ValueError(f"{name} images are grey; color_mode does not apply to them. "
                             f"Received: color_mode={config.color_mode!r}")
    if config.skip_unreadable and from_files:
        kwargs["on_error"] = "skip"
    return datasets.load(config.dataset, data_dir=config.data_dir, seed=config.seed,
                         train_classes=config.train_classes, **kwargs)


def _memory_plan(config) -> DataPlan:
    data = load_memory_dataset(config)
    x, y = data.x_train, data.y_train
    validation = None
    summary = {"splits": {"train": [len(y), len(np.unique(y))]}}
    if config.validation_classes:
        keep, held = holdout_classes(y, config.validation_classes)
        validation = Evaluation("validation", x[held], _relabel(y[held]))
        x, y = x[keep], _relabel(y[keep])
        summary["splits"] = {"train": [len(y), len(np.unique(y))],
                             "validation": [int(held.sum()), len(np.unique(data.y_train[held]))]}
    evaluations = []
    if len(data.y_test):
        evaluations.append(Evaluation("test", data.x_test, data.y_test))
        summary["splits"]["test"] = [len(data.y_test), len(np.unique(data.y_test))]
    return DataPlan(data.name, x, y, tuple(x.shape[1:]), RECALL_KS, evaluations, validation,
                    preprocessing=data.preprocessing, summary=summary,
                    test_pixels=(data.x_test, data.y_test))


def _disk_plan(config, scan) -> DataPlan:
    from dnc_keras import images

    ds = datasets.load_paths(config.dataset, config.data_dir, train_classes=config.train_classes)
    preprocessing = images.benchmark_preprocessing(
        image_size=config.image_size or DEFAULT_IMAGE_SIZE, resize_size=config.resize_size,
        channels=1 if config.color_mode == "grayscale" else 3)
    augmentation = images.RandomResizedCrop()
    splits = dict(ds.splits)
    skipped = {}
    if scan:
        for split_name, split in splits.items():
            splits[split_name], failures = images.drop_unreadable(split, split_name)
            if failures:
                skipped[split_name] = [path for _, path, _ in failures]
    train = splits["train"]
    validation = None
    if config.validation_classes:
        keep, held = holdout_classes(train.labels, config.validation_classes)
        held_split = train.subset(held)
        validation = Evaluation("validation", images.ImageFiles(held_split.paths, preprocessing),
                                held_split.labels)
        train = train.subset(keep)
        splits["validation"] = held_split
    train = _drop_small_classes(train, "training")
    splits["train"] = train
    contents = images.read_all(train.paths) if config.cache_images else None
    evaluations = []
    for ev in ds.eval_sets:
        query = splits[ev.query]
        gallery = splits[ev.gallery] if ev.gallery else None
        evaluations.append(Evaluation(
            ev.name, images.ImageFiles(query.paths, preprocessing), query.labels,
            None if gallery is None else images.ImageFiles(gallery.paths, preprocessing),
            None if gallery is None else gallery.labels))
    summary = {"root": ds.root, "standard": ds.info.get("standard"),
               "splits": {k: [len(v), v.num_classes] for k, v in splits.items()},
               "skipped_files": skipped, "scanned": bool(scan)}
    return DataPlan(ds.name, images.ImageFiles(train.paths, preprocessing, contents=contents),
                    train.labels, preprocessing.shape, ds.recall_ks, evaluations, validation,
                    train_paths=train.paths, preprocessing=preprocessing, contents=contents,
                    summary=summary, augmentation=augmentation)


def evaluate(model, evaluations, ks, nmi=True, seed=0, batch_size=256):
    """{evaluation name: metrics} for a trained model, embedding in batches of `batch_size`.

    Memory is the embeddings (SOP's 60,502 test images at d = 512: 124 MB) plus faiss's
    chunked search; images stream from disk one batch at a time.
    """
    return evaluate_protocol(lambda images: model.embed(images, batch_size=batch_size),
                             evaluations, ks=ks, nmi=nmi, seed=seed)


# -- the dry run ---------------------------------------------------------------------------

def build_schedule(config):
    """The run's `DnCSchedule`: what divide and conquer does at each epoch. The job's callback
    executes this object and `--dry-run` prints it."""
    from dnc_keras.schedule import DnCSchedule

    return DnCSchedule(config.epochs, config.learners,
                       1 if config.progressive else config.learners, config.recluster_period,
                       config.conquer_epoch, config.conquer_mode)


def plan_facts(config, plan) -> dict:
    """The resolved plan as a JSON-able dict: data, batches, steps, K schedule, evaluation."""
    n_train = len(plan.train_labels)
    batch = config.classes_per_batch * config.samples_per_class
    steps = config.steps_per_epoch or max(1, n_train // batch)
    facts = {
        "dataset": plan.name, "preset": config.preset, "data_dir": config.data_dir,
        "splits": plan.summary.get("splits", {}),
        "standard_dataset": plan.summary.get("standard"),
        "images_scanned": plan.summary.get("scanned", False),
        "input_shape": list(plan.input_shape),
        "max_learners": int(max_learners(plan.train_labels)),
        "batch": {"classes": config.classes_per_batch, "images_per_class":
                  config.samples_per_class, "size": batch},
        # The papers' epoch (epoch_length largest or smallest) follows the clusters: the first
        # epoch's steps are known (one cluster, unless K starts higher), the total is not.
        "epoch_length": config.epoch_length, "steps_per_epoch": steps, "epochs": config.epochs,
        "total_steps": steps * config.epochs if config.epoch_length == "fixed" else None,
        "schedule": build_schedule(config).to_dict(),
        "evaluations": [{"name": ev.name, "protocol": ev.protocol,
                         "queries": len(ev.query_labels),
                         "gallery": None if ev.gallery is None else len(ev.gallery_labels)}
                        for ev in plan.evaluations],
        "recall_ks": list(plan.recall_ks), "nmi": config.nmi,
        "model_selection": ("best validation MAP@R on held-out training classes"
                            if plan.validation is not None else "final epoch"),
        "seeds": list(range(config.seed, config.seed + config.seeds)),
    }
    if plan.preprocessing is not None:
        facts["preprocessing"] = plan.preprocessing.to_dict()
    if plan.augmentation is not None:
        p, a = plan.preprocessing, plan.augmentation
        facts["images"] = {
            "train": f"random resized crop {p.size[0]} (scale {a.scale[0]:g}-{a.scale[1]:g}, "
                     f"ratio {a.ratio[0]:.3g}-{a.ratio[1]:.3g})" +
                     (", horizontal flip" if a.flip else ""),
            "eval": p.describe(),
            "cached_in_memory": bool(config.cache_images)}
    return facts


def describe(config, plan) -> str:
    """The text of `dnc-keras train --dry-run`."""
    facts = plan_facts(config, plan)
    lines = [f"Plan for {facts['dataset']}" + (f" (preset {config.preset})" if config.preset
                                               else "")
             + (f" from {config.data_dir}" if config.data_dir else "")]
    if facts["standard_dataset"] is False:
        lines.append("  warning: the dataset on disk differs from the published one")
    for split, (n_images, n_classes) in facts["splits"].items():
        lines.append(f"  {split:<10s} {n_images:>8,d} images {n_classes:>7,d} classes")
    if "images" in facts:
        lines.append(f"Images {'x'.join(map(str, facts['input_shape']))}: train "
                     f"{facts['images']['train']}; eval {facts['images']['eval']}"
                     + ("; cached in memory" if facts["images"]["cached_in_memory"] else ""))
    if "images" not in facts and plan.preprocessing is not None:
        lines.append(f"Images {'x'.join(map(str, facts['input_shape']))}: "
                     f"{plan.preprocessing.describe()}")
    if not facts["images_scanned"] and plan.on_disk:
        lines.append("  (images not decoded in the dry run; training first checks each one)")
    # A backbone trained from scratch names its normalisation; a pretrained one its weights.
    weights = (f", weights {config.weights}" if config.normalization is None else
               f", {'batch renormalisation' if config.normalization == 'renorm' else 'BatchNorm'}")
    lines.append(f"Model: {config.backbone}{weights} -> {config.embedding_dim}-d embedding, "
                 f"{config.subspaces} subspaces, {config.learners} learner(s) at most "
                 f"(these classes allow {facts['max_learners']}); loss {config.loss}"
                 + (" with a learned beta" if config.learn_beta else "")
                 + f"; {config.inference_embedding} embedding at inference")
    steps = (f"{facts['steps_per_epoch']:,d} steps per epoch x {config.epochs} epochs = "
             f"{facts['total_steps']:,d} steps" if facts["total_steps"] is not None else
             f"{config.epochs} epochs of K x the batches of the {config.epoch_length} cluster "
             f"(the papers' epoch; {facts['steps_per_epoch']:,d} steps with one cluster)")
    lines.append(f"Batches: {config.classes_per_batch} classes x {config.samples_per_class} "
                 f"images = {facts['batch']['size']}; {steps}")
    lines.append(f"Optimiser: Adam, learning rate {config.learning_rate:g}, coupled weight "
                 f"decay {config.weight_decay:g}"
                 + (f", on masks {config.mask_weight_decay:g}" if config.mask_weight_decay
                    else "")
                 + ("; backbone learning rate 0 on the epochs that re-cluster"
                    if config.freeze_backbone_on_recluster else ""))
    lines.append(f"DnC schedule: {build_schedule(config).describe()}"
                 + ("; each division splits a fresh k-means at the current K"
                    if config.recluster_before_divide else ""))
    clustered = "backbone features" if config.cluster_on == "features" else "embedding"
    source = ("the train steps computed (a pass only for rows too old)"
              if config.recluster_features == "training"
              else "of a full pass over the training images")
    walk = " (each cluster's images without replacement)" if config.batch_order == "walk" else ""
    lines.append(f"Clustering: k-means on the {clustered} {source}; {config.batch_order} "
                 f"batches{walk}")
    metrics = "R@" + ",".join(map(str, facts["recall_ks"])) + ", MAP@R" + \
        (", NMI" if config.nmi else "")
    for ev in facts["evaluations"]:
        gallery = f" against {ev['gallery']:,d} gallery images" if ev["gallery"] else ""
        lines.append(f"Evaluation {ev['name']}: {ev['queries']:,d} queries{gallery} "
                     f"({ev['protocol']}): {metrics}")
    lines.append(f"Model selection: {facts['model_selection']}; seeds {facts['seeds']}")
    return "\n".join(lines)

