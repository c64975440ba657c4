"""Options defined once: the CLI, --help and config files all come from one table, and a bad
value anywhere is a one-line error naming the key, the value and what is expected."""

import importlib
import json

import keras
import pytest

from dnc_keras import datasets
from dnc_keras.training.config import TrainConfig, read_settings
from dnc_keras_cli import build_parser, main
from dnc_keras_cli.options import BACKBONES, DATASETS, LOSSES, TRAIN_OPTIONS, resolve


def test_yaml_values_are_read_as_their_options_types(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text('learning_rate: 1e-3\nprogressive: "false"\nepochs: "7"\nmargin: null\n')
    config = TrainConfig.from_file(str(path))
    assert config.learning_rate == 0.001 and isinstance(config.learning_rate, float)
    assert config.progressive is False and config.epochs == 7 and config.margin is None


@pytest.mark.parametrize("text, message", [
    ("epochs: ten\n", "epochs='ten': expected an integer >= 1"),
    ("epochs: 2.5\n", "epochs=2.5: expected an integer >= 1"),
    ("progressive: maybe\n", "progressive='maybe': expected true or false"),
    ("loss: hinge\n", "loss='hinge': expected one of margin, triplet_hard"),
    ("learning_rate: fast\n", "learning_rate='fast': expected a number >= 0"),
    ("learners: 0\n", "learners=0: expected an integer >= 1"),
    ("epochz: 3\n", r"unknown setting\(s\) \['epochz'\]"),
    ("- a list\n", "expected a mapping of settings"),
])
def test_a_bad_value_in_a_file_is_one_line_naming_it(tmp_path, text, message, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_settings(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    # Through the CLI: exit 2, the same line on stderr, no traceback.
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in TRAIN_OPTIONS:
        assert option.cli_flag in text, option.name
    assert text.count("(default:") >= len(TRAIN_OPTIONS)
    assert "(default: 10)" in text and "(default: triplet_hard)" in text


def test_every_flag_reaches_its_field(tmp_path, capsys):
    """--dry-run --json prints the resolved plan: the flags' values are in it."""
    assert main(["train", "--dataset", "digits", "--learners", "2", "--epochs", "6",
                 "--no-progressive", "--conquer-mode", "cvpr", "--dry-run", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    schedule = facts["schedule"]
    assert (schedule["epochs"], schedule["final_learners"], schedule["initial_learners"],
            schedule["conquer_mode"]) == (6, 2, 2, "cvpr")


def test_registries_name_what_the_package_defines():
    for name in LOSSES:
        loss = resolve(LOSSES, name, "loss")
        assert keras.saving.get_registered_object(f"dnc_keras>{loss.__name__}") is loss
    for name in BACKBONES:
        assert callable(resolve(BACKBONES, name, "backbone"))
    assert set(DATASETS) == set(datasets.DATASET_NAMES + datasets.BENCHMARK_NAMES)
    for name, (memory, files) in DATASETS.items():
        # Each entry names a loader of the package: in memory, of files, or both.
        assert memory or files, name
        for entry in filter(None, (memory, files)):
            module, attribute = entry.split(":")
            assert callable(getattr(importlib.import_module(module), attribute)), entry
    assert datasets.BENCHMARK_NAMES == ("cub", "cars", "sop", "inshop", "vehicleid")
    assert set(datasets.PATH_DATASET_NAMES) == set(datasets.BENCHMARK_NAMES) | {"folder",
                                                                                 "omniglot"}
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        resolve(LOSSES, "hinge", "loss")


def test_color_mode_applies_to_every_loader_or_is_refused(tmp_path, capsys):
    assert main(["train", "--dataset", "glyphs", "--color-mode", "rgb", "--dry-run"]) == 2
    assert "glyphs images are grey; color_mode does not apply" in capsys.readouterr().err


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3)])
def test_color_mode_reaches_the_folder_loader(tmp_path, color_mode, channels):
    """--color-mode is applied to folder data (it was recorded in config.json and ignored): the
    images have its channels, and grayscale equals Pillow's own grey conversion."""
    import numpy as np
    from PIL import Image

    from dnc_keras.training.plan import load_memory_dataset

    rng = np.random.default_rng(0)
    for c in range(4):
        (tmp_path / f"class{c}").mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"class{c}" / f"{i}.png")
    config = TrainConfig(dataset="folder", data_dir=str(tmp_path), image_size=16,
                         color_mode=color_mode)
    data = load_memory_dataset(config)
    assert data.x_train.shape[1:] == (16, 16, channels)
    if color_mode == "grayscale":
        first = sorted((tmp_path / "class0").iterdir())[0]
        grey = np.asarray(Image.open(first).convert("L"), np.float32) / 255
        images = np.concatenate([data.x_train, data.x_test])
        assert np.min(np.abs(images[..., 0] - grey).max(axis=(1, 2))) < 1 / 255 + 1e-6


def test_papers_schedule_options_reach_the_saved_model(tmp_path):
    """--inference-embedding and --mask-weight-decay are the model's (so a loaded model and its
    exports compute the same embedding); the per-block embedding is CVPR's concatenation."""
    import numpy as np

    from dnc_keras.training.job import build_model

    config = TrainConfig(learners=2, progressive=False, subspaces="fixed",
                         inference_embedding="masked", embedding_dim=8)
    model = build_model(config, (28, 28, 1))
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    _, z = model.encoder(images)
    blocks = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in np.split(z.numpy(), 2, 1)]
    expected = np.concatenate(blocks, 1) / np.sqrt(2)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-5)
    learned = build_model(TrainConfig(learners=2, subspaces="learned", mask_weight_decay=1e-4),
                          (28, 28, 1))
    assert learned.mask_weight_decay == 1e-4 and learned.subspaces.inference == "full"


@pytest.mark.parametrize("settings, message", [
    (dict(mask_weight_decay=1e-4), "mask_weight_decay applies to learned masks"),
    (dict(learn_beta=True, loss="margin", strategy="mirrored"), "learn_beta runs with "
     "model.fit on one device"),
    (dict(learn_beta=True), "learn_beta learns the margin loss's boundary .loss='margin'.. "
     "Received: loss='triplet_hard'"),
    (dict(freeze_backbone_on_recluster=True, strategy="mirrored"), "one device, not with a "
     "strategy"),
    (dict(inference_embedding="blocks"), "inference_embedding=.blocks.: expected one of full, "
     "masked"),
    (dict(normalization="renorm", backbone="resnet50"), "normalization applies to conv4.*"
     "Received: normalization='renorm'"),
    (dict(normalization="layer"), "normalization=.layer.: expected one of batch, renorm"),
    (dict(epoch_length="largest", steps_per_epoch=5), "steps_per_epoch fixes the epoch's "
     "length; epoch_length='largest' sets it from the clusters. Received both: "
     "steps_per_epoch=5"),
    (dict(epoch_length="papers"), "epoch_length=.papers.: expected one of fixed, largest, "
     "smallest"),
])
def test_papers_schedule_options_refuse_what_they_cannot_do(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_conv4_trains_with_batch_renormalisation_unless_told_otherwise(tmp_path):
    """The run's Conv-4 defaults to batch renormalisation, recorded as such in the config (so
    a BatchNorm run saved before the default changed is not resumed into another model); a
    pretrained backbone keeps its frozen statistics and records no normalisation."""
    from dnc_keras.training.job import build_model
    from dnc_keras.training.run_folder import RunFolder

    config = TrainConfig()
    assert config.normalization == "renorm" and config.to_dict()["normalization"] == "renorm"
    bn0 = build_model(config, (28, 28, 1)).encoder.get_layer("conv4").get_layer("bn0")
    assert bn0.renorm
    batch = build_model(TrainConfig(normalization="batch"), (28, 28, 1))
    assert not batch.encoder.get_layer("conv4").get_layer("bn0").renorm
    assert TrainConfig.resolve(preset="cub").normalization is None
    # A run saved before the option existed trained BatchNorm: it differs from today's default.
    saved = {k: v for k, v in TrainConfig(normalization="batch").to_dict().items()
             if k != "normalization"}
    RunFolder(tmp_path / "run").claim(saved)
    full_pass = TrainConfig(recluster_features="pass")  # as every run then re-clustered
    assert RunFolder(tmp_path / "run").differences(full_pass.to_dict()) == ["normalization"]
    assert RunFolder(tmp_path / "run").differences(
        TrainConfig(normalization="batch").to_dict()) == []


def test_the_fast_route_is_the_default_where_it_was_measured(tmp_path):
    """Re-clustering on the train steps' features with the walk, by default, only where the
    train steps compute inference's features (a Conv-4 with renorm, backbone features, one
    device); a run folder saved with the earlier default says what differs, with both values."""
    from dnc_keras.training.run_folder import RunFolder

    def route(**settings):
        config = TrainConfig(**settings)
        return config.recluster_features, config.batch_order

    assert route() == ("training", "walk")
    assert route(normalization="batch") == route(cluster_on="embedding") == \
        route(strategy="mirrored") == route(recluster_features="pass") == ("pass", "random")
    assert TrainConfig.resolve(preset="cub").recluster_features == "pass"  # ResNet-50
    assert route(recluster_features="training", batch_order="random") == ("training", "random")
    saved = TrainConfig(recluster_features="pass", batch_order="random").to_dict()
    RunFolder(tmp_path / "run").claim(saved)
    (tmp_path / "run" / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="other settings .batch_order: 'random' there, 'walk' "
                       "here; recluster_features: 'pass' there, 'training' here.: resume"):
        RunFolder(tmp_path / "run").claim(TrainConfig().to_dict())


@pytest.mark.parametrize("option", [o for o in TRAIN_OPTIONS if o.kind is bool],
                         ids=lambda o: o.name)
def test_every_switch_can_be_set_either_way_over_a_recipe(option):
    """A recipe or a config file may set a switch either way, so the CLI has --x and --no-x."""
    flag = "--" + option.name.replace("_", "-")
    for argv, value in (([flag], True), ([flag.replace("--", "--no-", 1)], False), ([], None)):
        assert getattr(build_parser().parse_args(["train", *argv]), option.name) is value
    needs = {"learn_beta": {"loss": "margin"}}.get(option.name, {})  # a switch of that loss
    config = TrainConfig.resolve(dataset="omniglot", **needs,
                                 **{option.name: not option.default})
    assert getattr(config, option.name) is (not option.default)
