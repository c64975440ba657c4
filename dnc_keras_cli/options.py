"""Every setting of `dnc-keras train`, defined once: name, type, default, choices, help.

`dnc_keras.training.TrainConfig` is built from this table, the CLI's flags and `--help` are
generated from it, and config files (`--config`, presets) are checked against it, so a bad value
anywhere gets the same one-line error naming the key, the value and what was expected.

This module imports nothing heavier than the standard library: `dnc-keras --help` answers
without loading TensorFlow. For the same reason the registries of losses, backbones and
datasets live here as names pointing at their classes (`module:attribute`): adding one is the
class and one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# name -> "module:attribute" of the class (losses, backbones) or loader (datasets).
LOSSES = {
    "margin": "dnc_keras.losses:MarginLoss",
    "triplet_hard": "dnc_keras.losses:TripletHardLoss",
    "triplet_semihard": "dnc_keras.losses:TripletSemiHardLoss",
    "contrastive": "dnc_keras.losses:ContrastiveLoss",
}
BACKBONES = {
    "conv4": "dnc_keras.backbones:conv4",
    "resnet50": "dnc_keras.backbones:resnet50",
}
# name -> ("module:loader" of the in-memory dataset, "module:loader" of its files), either None
# where it does not apply: `dnc_keras.datasets.load` calls the first (the on-disk benchmarks,
# which have none, return their files), `load_paths` the second. A dataset is one line here.
DATASETS = {
    "glyphs": ("dnc_keras.datasets:load_glyphs", None),
    "digits": ("dnc_keras.datasets:load_digits", None),
    "omniglot": ("dnc_keras.datasets:load_omniglot", "dnc_keras.datasets:load_omniglot_paths"),
    "folder": ("dnc_keras.datasets:load_folder", "dnc_keras.datasets:load_folder_paths"),
    "cub": (None, "dnc_keras.datasets:load_cub"),
    "cars": (None, "dnc_keras.datasets:load_cars"),
    "sop": (None, "dnc_keras.datasets:load_sop"),
    "inshop": (None, "dnc_keras.datasets:load_inshop"),
    "vehicleid": (None, "dnc_keras.datasets:load_vehicleid"),
}
PRESETS = ("cub", "cars", "sop", "inshop", "vehicleid", "omniglot", "glyphs", "folder", "digits")
# Presets that are a dataset's recipe: `--dataset NAME` without a --preset starts from it. Each
# names where its settings come from, as `dnc-keras train` prints it: a search on the dataset's
# validation classes (benchmarks/search_recipe.py), or, for data no search can use, why not.
RECIPES = {
    "omniglot": "chosen on validation classes",
    "glyphs": "chosen on validation classes",
    "folder": "not searched (your data): what both searches chose, in the main job's steps",
    "digits": "not searched (5 training classes): the defaults with K = 2",
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_DEFAULT = object()  # Option.predates unset: such runs had the default


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting.

    Args:
        name: the `TrainConfig` field and config-file key.
        kind: `int`, `float`, `str` or `bool`.
        default: the value when nothing sets it.
        help: one line for `--help`.
        choices: the allowed values, if a closed set.
        nullable: `None` is allowed (and means "the dataset's own" or "none").
        minimum: the smallest allowed number, if any.
        flag: the CLI flag. Defaults to `--name` with dashes.
        unset: what a default of None means, for `--help`.
        predates: the value of a run saved before the option existed (its config.json lacks
            it), where that is not the default: the value such runs trained with.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple | None = None
    nullable: bool = False
    minimum: float | None = None
    flag: str | None = None
    unset: str = "none"
    predates: Any = _DEFAULT

    @property
    def before_it_existed(self):
        """What a run saved without this option ran with (`predates`, else the default)."""
        return self.default if self.predates is _DEFAULT else self.predates

    @property
    def cli_flag(self):
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, value, where="setting"):
        """The value in its kind, checked; ValueError naming key, value and expectation.

        Strings from YAML or the command line are read as numbers or booleans where the
        option needs one (YAML reads `1e-3` as a string); a quoted `"false"` is False.
        """
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise self._error(value, where)
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise self._error(value, where)
        if self.kind in (int, float):
            if isinstance(value, bool):
                raise self._error(value, where)
            try:
                number = self.kind(value) if isinstance(value, str) else value
                if self.kind is int and (not float(number).is_integer()):
                    raise ValueError
                number = self.kind(number)
            except (TypeError, ValueError):
                raise self._error(value, where) from None
            if self.minimum is not None and number < self.minimum:
                raise self._error(value, where)
            return number
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            raise self._error(value, where)
        return value

    def expected(self):
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        else:
            text = {int: "an integer", float: "a number", str: "a string"}[self.kind]
            if self.minimum is not None:
                text += f" >= {self.minimum:g}"
        return text + (" (or null)" if self.nullable else "")

    def _error(self, value, where):
        return ValueError(f"{where} {self.name}={value!r}: expected {self.expected()}")


def _opt(name, kind, default, help, **kwargs):
    return Option(name, kind, default, help, **kwargs)


# conv4's normalisations in training (dnc_keras.backbones.conv4), and what a run trains with
# where no setting chooses (the layer itself defaults to Keras's plain BatchNorm): batch
# renormalisation, ahead of BatchNorm with the CLI's defaults on Omniglot and glyphs and even
# with it at both recipes (README, "Batch renormalisation").
NORMALIZATIONS = ("batch", "renorm")
# The sampler's batch orders and epoch lengths (dnc_keras.sampling checks its arguments against
# these, the CLI its flags).
ORDERS = ("random", "walk")
EPOCH_LENGTHS = ("fixed", "largest", "smallest")
CONV4_NORMALIZATION = "renorm"

TRAIN_OPTIONS = (
    # What to train on.
    _opt("preset", str, None, "the papers' settings for a benchmark, or a dataset's recipe "
         "(flags override them)", choices=PRESETS, nullable=True,
         unset="the dataset's recipe, where it has one"),
    _opt("dataset", str, "glyphs", "built in: glyphs, digits; from a folder: omniglot, "
         "folder; on-disk benchmarks: cub, cars, sop, inshop, vehicleid",
         choices=tuple(DATASETS)),
    _opt("data_dir", str, None, "the dataset's folder as its archive unpacks", nullable=True),
    _opt("train_classes", str, "standard", "standard: the dataset's usual split; all: train on "
         "every class, for a model to deploy", choices=("standard", "all")),
    _opt("image_size", int, None, "side of the model's input", nullable=True, minimum=1,
         unset="the dataset's own; 224 for the on-disk benchmarks"),
    _opt("resize_size", int, None, "on-disk benchmarks: shorter side before the centre crop",
         nullable=True, minimum=1, unset="256 for 224"),
    _opt("color_mode", str, None, "rgb or grayscale (refused for datasets that are only grey)",
         choices=("rgb", "grayscale"), nullable=True, unset="the dataset's own"),
    _opt("cache_images", bool, False, "keep the training files' bytes in memory"),
    _opt("check_images", bool, True, "decode every image once before training"),
    _opt("skip_unreadable", bool, False, "folder, omniglot: leave out unreadable images (and "
         "classes left with fewer than 2), with a warning, instead of stopping at the first "
         "(the on-disk benchmarks skip them with check_images)"),
    # The model.
    _opt("backbone", str, "conv4", "the network before the embedding",
         choices=tuple(BACKBONES)),
    _opt("weights", str, None, "backbone weights: imagenet, a local file, or none",
         nullable=True),
    _opt("normalization", str, None, "conv4's BatchNorm in training: batch: each batch's "
         "statistics; renorm: batch renormalisation, the moving statistics inference uses "
         "(one-cluster batches then train what is evaluated)", choices=NORMALIZATIONS,
         nullable=True, unset=f"{CONV4_NORMALIZATION} for conv4; a pretrained backbone keeps "
         "its statistics frozen", predates="batch"),
    _opt("embedding_dim", int, 128, "d, the embedding's width", minimum=1),
    _opt("learners", int, 4, "final number of learners K; 1 is the single-learner baseline",
         minimum=1),
    _opt("subspaces", str, "fixed", "fixed blocks (CVPR) or learned masks (TPAMI)",
         choices=("fixed", "learned")),
    _opt("inference_embedding", str, "full", "the embedding predict, evaluation and exports "
         "compute: full: normalize(z) (the official codes); masked: each block normalised, "
         "then concatenated (CVPR), or z weighted by the mean learned mask",
         choices=("full", "masked")),
    # The divide-and-conquer schedule.
    _opt("progressive", bool, True, "start with one learner and double K every period"),
    _opt("recluster_period", int, 2, "T, epochs between two re-clusterings or divisions",
         minimum=1),
    _opt("recluster_before_divide", bool, False, "a division first re-clusters by k-means "
         "at the current K, then splits each cluster in two; otherwise it splits the last "
         "clustering's clusters"),
    _opt("cluster_on", str, "features", "what k-means clusters",
         choices=("features", "embedding")),
    _opt("recluster_features", str, None, "pass: embed all training images at each "
         "re-clustering (the papers); training: re-use the train steps' features",
         choices=("pass", "training"), nullable=True, unset="training where the train steps "
         "compute inference's features (conv4 with renorm, clustering features, one device), "
         "else pass", predates="pass"),
    _opt("batch_order", str, None, "random: each batch draws its classes and images "
         "afresh; walk: each cluster's images without replacement between re-clusterings",
         choices=ORDERS, nullable=True, unset="walk with recluster_features "
         "training, else random", predates="random"),
    _opt("epoch_length", str, "fixed", "fixed: N // (P x M) steps, or steps_per_epoch; "
         "largest: K x the batches of the largest cluster (the papers' epoch, its length "
         "changing with each re-clustering); smallest: K x the smallest's",
         choices=EPOCH_LENGTHS),
    _opt("kmeans_backend", str, "auto", "k-means implementation",
         choices=("auto", "faiss", "sklearn")),
    _opt("conquer_fraction", float, 0.2, "last fraction of the epochs trained on the full "
         "embedding", minimum=0.0),
    _opt("conquer_mode", str, "tpami", "tpami: per-cluster batches go on; cvpr: batches from "
         "all the data", choices=("tpami", "cvpr")),
    # The loss and the optimiser.
    _opt("loss", str, "triplet_hard", "the learners' loss", choices=tuple(LOSSES)),
    _opt("margin", float, None, "margin of the loss (alpha for margin)", nullable=True,
         unset="the loss's own"),
    _opt("learn_beta", bool, False, "margin loss: learn its boundary beta, one per learner "
         "and one for the conquered embedding (Wu et al.); otherwise fixed at 1.2"),
    _opt("epochs", int, 10, "epochs of training", minimum=1),
    _opt("classes_per_batch", int, 20, "P, classes per batch", minimum=2),
    _opt("samples_per_class", int, 4, "M, images per class in a batch", minimum=1),
    _opt("steps_per_epoch", int, None, "fixed steps per epoch", nullable=True,
         minimum=1, unset="N // (P x M)"),
    _opt("learning_rate", float, 1e-3, "Adam's learning rate", minimum=0.0),
    _opt("weight_decay", float, 0.0, "coupled L2 (official: 1e-4)", minimum=0.0),
    _opt("mask_weight_decay", float, 0.0, "coupled L2 on learned masks", minimum=0.0),
    _opt("freeze_backbone_on_recluster", bool, False, "backbone learning rate 0 on every "
         "recluster_period-th epoch, those that re-cluster (TPAMI); the embedding layer and "
         "masks still train"),
    _opt("augment", bool, False, "random rotation and shift of in-memory training images"),
    # Evaluation and model selection.
    _opt("eval_every", int, 0, "evaluate on the test classes every N epochs (0: at the end)",
         minimum=0),
    _opt("validation_classes", float, 0.0, "hold out this fraction of the training classes "
         "and keep the epoch with the best validation MAP@R", minimum=0.0),
    _opt("test_evaluation", bool, True, "evaluate on the test classes at the end (a recipe "
         "search on --validation-classes turns it off)"),
    _opt("nmi", bool, True, "compute NMI (k-means with one cluster per test class)"),
    _opt("plots", bool, True, "write the training-curve and t-SNE plots"),
    # The run.
    _opt("seed", int, 0, "seed of every random stream of the run", minimum=0),
    _opt("seeds", int, 1, "repeat with seeds seed..seed+N-1 and report the mean and 95% "
         "interval", minimum=1),
    _opt("out", str, None, "run folder", nullable=True,
         unset="runs/<timestamp>"),
    _opt("strategy", str, None, "train with the tf.distribute loop: mirrored (this machine's "
         "GPUs) or multi-worker (a TF_CONFIG cluster)", choices=("mirrored", "multi-worker"),
         nullable=True, unset="model.fit on one device"),
    _opt("checkpoint_every", int, None, "with --strategy: also checkpoint every N steps",
         nullable=True, minimum=1, unset="at each epoch's end"),
    _opt("deterministic", bool, False, "TensorFlow op determinism: the same seed gives the "
         "same model bit for bit, and a resumed run the model of an uninterrupted one "
         "(slower on GPU)"),
    _opt("mixed_precision", bool, False, "float16 compute with loss scaling (mixed_float16), "
         "for GPUs with float16 units; variables, losses, masks and metrics stay float32 "
         "(slower on CPU, and never measured on a GPU here)"),
)

BY_NAME = {o.name: o for o in TRAIN_OPTIONS}


def check_settings(values, where):
    """A mapping of settings (a config file, a preset) parsed and checked option by option."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of settings. Received: "
                         f"{type(values).__name__}")
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(BY_NAME)}")
    return {key: BY_NAME[key].parse(value, f"{where}:") for key, value in values.items()}


# The export's defaults: the bounds of one request (dnc_keras.export.signatures.Bounds), the
# edge variants and the runtimes an export can run on.
BOUNDS_DEFAULTS = {"max_side": 4096, "max_batch": 128, "max_pixels": 4032 * 3024}
# build-index's HNSW build parameters, here so that --help shows them without loading faiss
# or TensorFlow; dnc_keras.export.faiss_index builds with them. efConstruction 200 is hnswlib's
# default: at 1,000,000 items of benchmarks/bench_index.py a graph built with 200 reached
# recall@10 0.95 at efSearch 48 where one built with 80 needed 96 (a build about twice as long
# for searches about 1.5x as fast).
HNSW_DEFAULTS = {"M": 32, "efConstruction": 200}
# What one image file may declare in its header, checked before it is decoded, wherever a file
# is read outside a served request (the loaders, evaluation, `dnc-keras embed RUN`): a
# decompression bomb is refused by name instead of exhausting memory, while every camera
# photograph passes (an export's requests are held to its own, smaller bounds).
FILE_LIMITS = {"max_side": 16384, "max_pixels": 50_000_000}
QUANTIZE_MODES = ("int8", "float16")
RUNTIMES = ("savedmodel", "onnx")


def resolve(registry, name, kind):
    """The class or function a registry names, imported; ValueError for an unknown name."""
    import importlib

    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(registry)}")
    module, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module), attribute)
