"""The papers' settings per benchmark, as YAML files shipped in `dnc_keras/presets/`.

Each value carries its source in a comment: the official code of the paper that published a
command for that dataset (CVPR 2019 for In-shop and VehicleID, TPAMI 2021 for SOP), that code's
defaults, or, where neither says, the reason for the choice. `dnc-keras train --preset cub
--data-dir /data/CUB_200_2011` loads one; flags on the command line override its values.
"""

from __future__ import annotations

import dataclasses
from importlib import resources

import yaml

PRESET_NAMES = ("cub", "cars", "sop", "inshop", "vehicleid")


def preset_text(name) -> str:
    """The YAML text of a preset, comments included."""
    key = str(name).strip().lower()
    if key not in PRESET_NAMES:
        raise ValueError(f"Unknown preset {name!r}. Expected one of: {', '.join(PRESET_NAMES)}")
    return resources.files("dnc_keras").joinpath("presets", f"{key}.yaml").read_text("utf-8")


def load_preset(name) -> dict:
    """A preset's settings as a dict of `TrainConfig` fields.

    Raises:
        ValueError: unknown name, or a preset file with a setting TrainConfig does not have.
    """
    from dnc_keras.config import TrainConfig

    values = yaml.safe_load(preset_text(name))
    if not isinstance(values, dict):
        raise ValueError(f"Preset {name!r} must be a mapping of settings. Received: "
                         f"{type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Preset {name!r} has unknown setting(s) {unknown}")
    return values
