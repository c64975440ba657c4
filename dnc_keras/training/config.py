"""TrainConfig: every setting of a training run, loadable from JSON or YAML.

Its fields, types, defaults and choices are `dnc_keras_cli.options.TRAIN_OPTIONS`, the one
definition the CLI's flags and `--help` are generated from too. Defaults are tuned for the
Conv-4 on small images and a few CPU minutes (the glyphs job); the papers' ResNet-50 settings are
the presets.
"""

from __future__ import annotations

import dataclasses
import json
import os

import yaml

from dnc_keras_cli.options import (BY_NAME, CONV4_NORMALIZATION, LOSSES, RECIPES, TRAIN_OPTIONS,
                                   check_settings)


def _checks(config):
    """The rules that tie settings together (each setting alone was checked by its option)."""
    if config.recluster_features == "training" and config.cluster_on != "features":
        raise ValueError("recluster_features='training' keeps backbone features; it needs "
                         f"cluster_on='features'. Received: cluster_on={config.cluster_on!r}")
    if config.progressive and config.learners & (config.learners - 1):
        raise ValueError("Progressive division doubles K, so learners must be a power of 2. "
                         f"Received: learners={config.learners}")
    if not config.conquer_fraction < 1.0:
        raise ValueError(f"conquer_fraction must be in [0, 1). Received: "
                         f"conquer_fraction={config.conquer_fraction}")
    if not config.validation_classes < 1.0:
        raise ValueError("validation_classes is the fraction of the training classes held out "
                         "for model selection, in [0, 1). Received: "
                         f"validation_classes={config.validation_classes}")
    if config.epoch_length != "fixed":  # imported only then: the sampler brings TensorFlow
        from dnc_keras.sampling import check_epoch_length

        check_epoch_length(config.epoch_length, config.steps_per_epoch)
    if config.checkpoint_every is not None and config.strategy is None:
        raise ValueError("checkpoint_every applies to the distributed loop: set strategy "
                         "('mirrored' for one machine)")
    if config.strategy is not None and config.seeds > 1:
        raise ValueError("A strategy is created once per process: run one process per seed "
                         f"(seeds=1). Received: seeds={config.seeds}, "
                         f"strategy={config.strategy!r}")
    if config.strategy == "multi-worker" and not config.out:
        raise ValueError("strategy='multi-worker' needs out: a run folder that every worker can "
                         "reach (shared storage), the same on all of them")
    if config.mask_weight_decay and config.subspaces != "learned":
        raise ValueError("mask_weight_decay applies to learned masks (subspaces='learned'). "
                         f"Received: subspaces={config.subspaces!r}")
    if config.learn_beta and config.loss != "margin":
        raise ValueError("learn_beta learns the margin loss's boundary (loss='margin'). "
                         f"Received: loss={config.loss!r}")
    for switch in ("freeze_backbone_on_recluster", "learn_beta"):
        if getattr(config, switch) and config.strategy is not None:
            raise ValueError(f"{switch} runs with model.fit on one device, not with a "
                             f"strategy. Received: strategy={config.strategy!r}")
    if config.normalization is not None and config.backbone != "conv4":
        raise ValueError(f"normalization applies to conv4, trained from scratch; {config.backbone}"
                         " keeps its pretrained BatchNorm statistics frozen. Received: "
                         f"normalization={config.normalization!r}")
    if config.backbone == "resnet50" and config.color_mode == "grayscale":
        raise ValueError("resnet50 takes RGB images (its ImageNet weights have 3 input "
                         "channels). Received: color_mode='grayscale'")


def _post_init(self):
    for option in TRAIN_OPTIONS:
        setattr(self, option.name, option.parse(getattr(self, option.name), "setting"))
    if self.normalization is None and self.backbone == "conv4":
        # Resolved here, so config.json records what was trained: a run saved before the
        # default changed then differs from a new one, and is not resumed into another model.
        self.normalization = CONV4_NORMALIZATION
    _resolve_reclustering(self)
    _checks(self)


def _resolve_reclustering(self):
    """The fast route by default where it was shown as good as the full pass (issue 13:
    Omniglot, a Conv-4 with renorm): re-clustering on the train steps' features, which renorm
    computes as inference does, each cluster walked without replacement so that every image
    has a recent row. Elsewhere (BatchNorm's training-mode features, a pretrained backbone's
    augmented crops, the embedding clustered, a strategy) the papers' full pass and random
    batches. Resolved here, so config.json records what was trained."""
    if self.recluster_features is None:
        fast = (self.normalization == "renorm" and self.cluster_on == "features"
                and self.strategy is None)
        self.recluster_features = "training" if fast else "pass"
    if self.batch_order is None:
        self.batch_order = "walk" if self.recluster_features == "training" else "random"


def _conquer_epoch(self):
    """First epoch of the conquer phase, or None when there is none."""
    if self.learners == 1 or self.conquer_fraction == 0:
        return None
    return self.epochs - max(1, round(self.conquer_fraction * self.epochs))


def _to_dict(self):
    return dataclasses.asdict(self)


def _from_file(cls, path, **overrides):
    """Reads a JSON or YAML file of settings; `overrides` (not None) win over the file."""
    values = read_settings(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def _resolve(cls, preset=None, path=None, **overrides):
    """Settings from a preset, then a file, then `overrides` (not None), each winning over the
    one before: `dnc-keras train --preset cub --config x.yaml --epochs 5`. Without a preset
    (from the caller or the file), a dataset that has a recipe (`RECIPES`) starts from it:
    `dnc-keras train --dataset omniglot` trains with the settings its search chose."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    file_values = read_settings(path) if path is not None else {}
    preset = preset if preset is not None else file_values.get("preset")
    if preset is None:
        dataset = overrides.get("dataset", file_values.get("dataset", BY_NAME["dataset"].default))
        preset = dataset if dataset in RECIPES else None
    values = {}
    if preset is not None:
        from dnc_keras.training.presets import load_preset

        values.update(load_preset(preset))
        values["preset"] = str(preset)
    values.update(file_values)
    values.update(overrides)
    return cls(**values)


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(o.name, o.kind if not o.nullable else o.kind | None,
      dataclasses.field(default=o.default, metadata={"option": o})) for o in TRAIN_OPTIONS],
    namespace={"__post_init__": _post_init, "conquer_epoch": property(_conquer_epoch),
               "to_dict": _to_dict, "from_file": classmethod(_from_file),
               "resolve": classmethod(_resolve),
               "__doc__": "Settings of `dnc-keras train` (see dnc_keras_cli.options)."})
TrainConfig.__module__ = __name__  # pickling and repr name the module that defines it


def read_settings(path):
    """The settings of a JSON or YAML file, each checked against its option."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    with open(path) as f:
        try:
            values = json.load(f) if str(path).endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not valid JSON or YAML ({error})".replace("\n", " ")) \
                from None
    return check_settings(values, str(path))


__all__ = ["TrainConfig", "read_settings", "LOSSES", "BY_NAME"]
