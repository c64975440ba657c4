import re

import pytest

from dnc_keras.training.config import TrainConfig
from dnc_keras.training.presets import PRESET_NAMES, load_preset, preset_text
from dnc_keras_cli.options import RECIPES

PAPERS = [name for name in PRESET_NAMES if name not in RECIPES]


@pytest.mark.parametrize("name", PAPERS)
def test_every_value_names_its_source(name):
    text = preset_text(name)
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings, name
    for line in settings:
        assert re.match(r"^\w+: \S+\s+# \S", line), f"{name}: no source comment on {line!r}"
    config = TrainConfig.resolve(preset=name)
    assert config.dataset == name and config.preset == name
    assert config.backbone == "resnet50" and config.weights == "imagenet"
    assert config.image_size == 224 and config.resize_size == 256
    assert config.loss == "margin" and config.learning_rate == 1e-5
    assert config.weight_decay == 1e-4 and config.recluster_period == 2


def test_official_commands():
    sop = TrainConfig.resolve(preset="sop")
    # TPAMI README: K = 32, 180 epochs, full embedding from epoch 80, 80 = 40 x 2, d = 512.
    assert (sop.learners, sop.epochs, sop.conquer_epoch) == (32, 180, 80)
    assert (sop.classes_per_batch, sop.samples_per_class, sop.embedding_dim) == (40, 2, 512)
    assert sop.subspaces == "learned" and sop.progressive
    for name in ("inshop", "vehicleid"):
        cvpr = TrainConfig.resolve(preset=name)
        # CVPR README: K = 8 from the start, 200 epochs, full embedding from 190 * 8 / 19 = 80.
        assert (cvpr.learners, cvpr.epochs, cvpr.conquer_epoch) == (8, 200, 80)
        assert (cvpr.classes_per_batch, cvpr.samples_per_class, cvpr.embedding_dim) == (20, 4,
                                                                                        128)
        assert cvpr.subspaces == "fixed" and not cvpr.progressive


def test_file_and_overrides_win_over_the_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 7\nlearners: 2\n")
    config = TrainConfig.resolve(preset="cub", path=str(path), learners=1, data_dir="/d",
                                 seed=None)
    assert (config.epochs, config.learners, config.data_dir, config.seed) == (7, 1, "/d", 0)
    assert config.embedding_dim == 512


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"Unknown preset 'imagenet'. Expected one of: cub"):
        load_preset("imagenet")


def test_fair_comparison_fields_are_checked():
    with pytest.raises(ValueError, match=r"validation_classes .* in \[0, 1\). Received: "
                                         r"validation_classes=1.5"):
        TrainConfig(validation_classes=1.5)
    with pytest.raises(ValueError, match="seeds=0: expected an integer >= 1"):
        TrainConfig(seeds=0)
    with pytest.raises(ValueError, match="resnet50 takes RGB images"):
        TrainConfig.resolve(preset="cub", color_mode="grayscale")
