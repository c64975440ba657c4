"""A dataset's recipe: the settings its committed search chose (or, where no search can run,
the settings carried over with their reason), used when the dataset is named alone
(`dnc-keras train --dataset omniglot`)."""

import json
import os
import re

import pytest

from dnc_keras import cli
from dnc_keras.training.config import TrainConfig
from dnc_keras.training.presets import load_preset, preset_text
from dnc_keras_cli.options import RECIPES

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results")
SEARCHED = ("omniglot", "glyphs")


def searched_choice(name):
    """The DnC family's choice in a committed search, with the values its second stage kept."""
    with open(os.path.join(RESULTS, f"recipe_search_{name}.json")) as f:
        dnc = json.load(f)["families"]["dnc"]
    chosen = dict(dnc.get("recipe", dnc["chosen"]["settings"]))
    chosen.pop("eval_every")
    return chosen


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_value_names_its_source(name):
    for line in (line for line in preset_text(name).splitlines()
                 if line and not line.startswith("#")):
        assert re.match(r"^\w+: \S+\s+# \S", line), f"{name}: no source comment on {line!r}"
    assert load_preset(name)["dataset"] == name


@pytest.mark.parametrize("name", SEARCHED)
def test_recipe_is_the_dnc_choice_of_its_committed_search(name):
    recipe = load_preset(name)
    recipe.pop("dataset")
    assert recipe == searched_choice(name)


def test_folder_recipe_carries_over_what_both_searches_chose_in_the_main_jobs_steps():
    from dnc_keras import datasets

    omniglot, glyphs = (searched_choice(name) for name in SEARCHED)
    agreed = {key: value for key, value in glyphs.items() if omniglot.get(key) == value}
    assert set(agreed) == set(glyphs) - {"epochs"}  # the searches differ in epochs alone
    recipe = load_preset("folder")
    assert {key: recipe[key] for key in agreed} == agreed
    # The rest is the schedule: the glyphs' recipe as the main job trains it, in steps.
    assert set(recipe) - set(agreed) == {"dataset", "epochs", "steps_per_epoch"}
    main_job = TrainConfig.resolve()
    steps_per_epoch = len(datasets.load("glyphs").y_train) // (
        main_job.classes_per_batch * main_job.samples_per_class)
    assert (recipe["epochs"], recipe["steps_per_epoch"]) == (main_job.epochs, steps_per_epoch)


def test_digits_train_with_the_defaults_and_the_most_learners_their_classes_allow(capsys):
    assert TrainConfig.resolve(dataset="digits") == TrainConfig(dataset="digits", learners=2,
                                                                preset="digits")
    # The bare command runs; K = 4, the defaults' value, is refused on 5 classes.
    assert cli.main(["train", "--dataset", "digits", "--dry-run"]) in (0, None)
    assert "digits recipe (not searched" in capsys.readouterr().out
    assert cli.main(["train", "--dataset", "digits", "--learners", "4", "--dry-run"]) == 2
    assert "learners must be <= 2" in capsys.readouterr().err


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
    assert TrainConfig.resolve(dataset="cub") == TrainConfig(dataset="cub")
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
