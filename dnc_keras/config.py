"""TrainConfig: every setting of a training run, with defaults, loadable from JSON or YAML."""

import dataclasses
import json
import os

import yaml

LOSSES = ("margin", "triplet_hard", "triplet_semihard", "contrastive")


@dataclasses.dataclass
class TrainConfig:
    """Settings of `dnc-keras train`. Defaults are tuned for the Conv-4 on small images and a
    few CPU minutes (the glyphs job); the papers' ResNet-50 settings differ (method.md, s. 6)."""

    dataset: str = "glyphs"
    data_dir: str | None = None
    train_classes: str = "standard"
    image_size: int | None = None
    backbone: str = "conv4"
    weights: str | None = None
    embedding_dim: int = 128
    learners: int = 4
    subspaces: str = "fixed"
    progressive: bool = True
    recluster_period: int = 2
    cluster_on: str = "features"
    recluster_features: str = "pass"
    kmeans_backend: str = "auto"
    conquer_fraction: float = 0.2
    conquer_mode: str = "tpami"
    loss: str = "triplet_hard"
    margin: float | None = None
    epochs: int = 10
    classes_per_batch: int = 20
    samples_per_class: int = 4
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = False
    eval_every: int = 0
    seed: int = 0
    out: str | None = None
    # On-disk benchmarks and the fair-comparison mode (docs/reproducing.md).
    preset: str | None = None
    resize_size: int | None = None
    color_mode: str | None = None
    cache_images: bool = False
    check_images: bool = True
    validation_classes: float = 0.0
    nmi: bool = True
    plots: bool = True
    seeds: int = 1
    # Scaling out (docs/distributed.md): None trains with model.fit on one device.
    strategy: str | None = None
    checkpoint_every: int | None = None

    def __post_init__(self):
        checks = {
            "loss": (self.loss, LOSSES),
            "subspaces": (self.subspaces, ("fixed", "learned")),
            "train_classes": (self.train_classes, ("standard", "all")),
            "conquer_mode": (self.conquer_mode, ("tpami", "cvpr")),
            "cluster_on": (self.cluster_on, ("features", "embedding")),
            "recluster_features": (self.recluster_features, ("pass", "training")),
            "color_mode": (self.color_mode, (None, "rgb", "grayscale")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}. Received: {name}={value!r}")
        if self.recluster_features == "training" and self.cluster_on != "features":
            raise ValueError("recluster_features='training' keeps backbone features; it needs "
                             f"cluster_on='features'. Received: cluster_on={self.cluster_on!r}")
        if self.learners < 1:
            raise ValueError(f"learners must be >= 1. Received: learners={self.learners}")
        if self.progressive and self.learners & (self.learners - 1):
            raise ValueError("Progressive division doubles K, so learners must be a power of "
                             f"2. Received: learners={self.learners}")
        if not 0.0 <= self.conquer_fraction < 1.0:
            raise ValueError(f"conquer_fraction must be in [0, 1). Received: "
                             f"{self.conquer_fraction}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1. Received: epochs={self.epochs}")
        if not 0.0 <= self.validation_classes < 1.0:
            raise ValueError("validation_classes is the fraction of the training classes held "
                             "out for model selection, in [0, 1). Received: "
                             f"validation_classes={self.validation_classes}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1. Received: seeds={self.seeds}")
        if self.strategy not in (None, "mirrored", "multi-worker"):
            raise ValueError("strategy must be 'mirrored', 'multi-worker' or None. Received: "
                             f"strategy={self.strategy!r}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1 step. Received: "
                             f"checkpoint_every={self.checkpoint_every}")
        if self.checkpoint_every is not None and self.strategy is None:
            raise ValueError("checkpoint_every applies to the distributed loop: set strategy "
                             "('mirrored' for one machine)")
        if self.strategy is not None and self.seeds > 1:
            raise ValueError("A strategy is created once per process: run one process per seed "
                             f"(seeds=1). Received: seeds={self.seeds}, "
                             f"strategy={self.strategy!r}")
        if self.strategy == "multi-worker" and not self.out:
            raise ValueError("strategy='multi-worker' needs out: a run folder that every worker "
                             "can reach (shared storage), the same on all of them")
        if self.backbone == "resnet50" and self.color_mode == "grayscale":
            raise ValueError("resnet50 takes RGB images (its ImageNet weights have 3 input "
                             "channels). Received: color_mode='grayscale'")

    @property
    def conquer_epoch(self):
        """First epoch of the conquer phase, or None when there is none."""
        if self.learners == 1 or self.conquer_fraction == 0:
            return None
        return self.epochs - max(1, round(self.conquer_fraction * self.epochs))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path, **overrides):
        """Reads a JSON or YAML file of settings; `overrides` (not None) win over the file."""
        values = read_settings(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def resolve(cls, preset=None, path=None, **overrides):
        """Settings from a preset, then a file, then `overrides` (not None), each winning over
        the one before: `dnc-keras train --preset cub --config x.yaml --epochs 5`."""
        values = {}
        if preset is not None:
            from dnc_keras.presets import load_preset

            values.update(load_preset(preset))
            values["preset"] = str(preset)
        if path is not None:
            values.update(read_settings(path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def read_settings(path):
    """The mapping of settings in a JSON or YAML file, checked against TrainConfig's fields."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    with open(path) as f:
        values = json.load(f) if str(path).endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values
