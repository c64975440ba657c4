"""A dataset's recipe: the settings its committed search chose, used when the dataset is named
alone (`dnc-keras train --dataset omniglot`)."""

import json
import os
import re

import pytest

from dnc_keras import cli
from dnc_keras.training.config import TrainConfig
from dnc_keras.training.presets import load_preset, preset_text
from dnc_keras_cli.options import RECIPES

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_the_dnc_choice_of_its_committed_search(name):
    with open(os.path.join(RESULTS, f"recipe_search_{name}.json")) as f:
        search = json.load(f)
    # The random search's choice, with the values its second stage kept (if it had one).
    dnc = search["families"]["dnc"]
    chosen = dict(dnc.get("recipe", dnc["chosen"]["settings"]))
    chosen.pop("eval_every")
    recipe = load_preset(name)
    assert recipe.pop("dataset") == name
    assert recipe == chosen
    for line in (line for line in preset_text(name).splitlines()
                 if line and not line.startswith("#")):
        assert re.match(r"^\w+: \S+\s+# \S", line), f"{name}: no source comment on {line!r}"


def test_naming_the_dataset_alone_trains_with_its_recipe(tmp_path):
    recipe = load_preset("omniglot")
    config = TrainConfig.resolve(dataset="omniglot")
    assert config.preset == "omniglot"
    assert {key: getattr(config, key) for key in recipe} == recipe
    # Flags, then a config file, win over the recipe; the file's dataset calls it up too.
    assert TrainConfig.resolve(dataset="omniglot", epochs=3).epochs == 3
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: omniglot\nlearners: 1\n")
    from_file = TrainConfig.resolve(path=str(path))
    assert from_file.preset == "omniglot" and from_file.learners == 1
    assert from_file.epochs == recipe["epochs"]
    # A dataset without a recipe keeps the defaults; a named preset is not replaced.
    assert TrainConfig.resolve(dataset="digits") == TrainConfig(dataset="digits")
    assert TrainConfig.resolve(preset="cub").preset == "cub"


def test_train_prints_the_recipe_and_the_flags_that_change_it(omniglot_dir, capsys):
    recipe = load_preset("omniglot")
    epochs = recipe["epochs"] + 1
    assert cli.main(["train", "--dataset", "omniglot", "--data-dir", str(omniglot_dir),
                     "--epochs", str(epochs), "--dry-run", "--json"]) in (0, None)
    captured = capsys.readouterr()
    line = next(line for line in captured.err.splitlines() if "omniglot recipe" in line)
    assert f"epochs {recipe['epochs']} (flag: {epochs})" in line
    assert f"learners {recipe['learners']}" in line
    plan = json.loads(captured.out.strip().splitlines()[-1])
    assert plan["preset"] == "omniglot"
