"""The papers' settings per benchmark, as YAML files shipped in `dnc_keras/presets/`.

Each value carries its source in a comment: the official code of the paper that published a
command for that dataset (CVPR 2019 for In-shop and VehicleID, TPAMI 2021 for SOP), that code's
defaults, or, where neither says, the reason for the choice. `dnc-keras train --preset cub
--data-dir /data/CUB_200_2011` loads one; flags on the command line override its values.
"""

from __future__ import annotations

from importlib import resources

import yaml

from dnc_keras_cli.options import PRESETS as PRESET_NAMES
from dnc_keras_cli.options import check_settings


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
    return check_settings(yaml.safe_load(preset_text(name)), f"preset {name!r}")
