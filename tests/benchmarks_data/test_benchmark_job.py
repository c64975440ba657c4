"""The main job and CLI on tiny replicas: dry runs of the presets, the per-dataset evaluation
protocols, and one short training through the on-disk pipeline in the fair-comparison mode."""

import json

import numpy as np
import pytest

from dnc_keras import cli
from dnc_keras.training import plan
from dnc_keras.training.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")

SMALL = ["--backbone", "conv4", "--weights", "none", "--image-size", "32",
         "--embedding-dim", "8", "--learning-rate", "1e-3"]


def test_dry_run_of_the_cub_preset(tmp_path, replicas, capsys):
    root = replicas.cub(tmp_path / "CUB_200_2011", classes=16, per_class=4)
    assert cli.main(["train", "--preset", "cub", "--data-dir", str(root), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "Plan for cub (preset cub)" in text
    assert "train            32 images       8 classes" in text
    assert "test             32 images       8 classes" in text
    assert ("40 classes x 2 images = 80; 100 epochs of K x the batches of the largest cluster "
            "(the papers' epoch; 1 steps with one cluster)") in text
    assert "epoch 2: divide every cluster in two -> 2 learners" in text
    assert ("Clustering: k-means on the backbone features of a full pass over the training "
            "images; random batches") in text  # a pretrained backbone: the papers' route
    assert "epoch 44: conquer" in text
    assert "shorter side 256, centre crop 224" in text and "R@1,2,4,8, MAP@R, NMI" in text
    assert "Model: resnet50, weights imagenet -> 512-d embedding" in text
    assert not (tmp_path / "runs").exists()
    # A Conv-4 trains its normalisation: the plan names which (batch renormalisation unless
    # told otherwise).
    for flags, named in (([], "batch renormalisation"), (["--normalization", "batch"],
                                                         "BatchNorm")):
        assert cli.main(["train", "--preset", "cub", "--data-dir", str(root), "--backbone",
                         "conv4", "--weights", "none", *flags, "--dry-run"]) == 0
        assert f"Model: conv4, {named} -> 512-d embedding" in capsys.readouterr().out


def test_dry_run_json_with_overrides_and_validation(tmp_path, replicas, capsys):
    root = replicas.inshop(tmp_path / "inshop", extra_train_items=5)
    argv = ["train", "--preset", "inshop", "--data-dir", str(root), "--learners", "2",
            "--validation-classes", "0.25", "--seeds", "3", "--dry-run", "--json"]
    assert cli.main(argv) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["splits"] == {"train": [16, 6], "query": [5, 3], "gallery": [4, 3],
                               "validation": [6, 2]}
    assert facts["evaluations"] == [{"name": "test", "protocol": "query vs gallery",
                                     "queries": 5, "gallery": 4}]
    assert facts["recall_ks"] == [1, 10, 20, 30, 40, 50]
    assert facts["schedule"]["actions"][0] == {"epoch": 0, "kind": "cluster", "learners": 2}
    assert facts["model_selection"].startswith("best validation MAP@R")
    assert facts["seeds"] == [0, 1, 2]


def test_dry_run_reports_too_many_learners(tmp_path, replicas, capsys):
    root = replicas.vehicleid(tmp_path / "VehicleID_V1.0")
    assert cli.main(["train", "--preset", "vehicleid", "--data-dir", str(root),
                     "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "Evaluation small: 2 queries (leave-one-out): R@1,5" in captured.out
    assert "Evaluation large: 6 queries" in captured.out
    assert "the training split has 3 of 3, so learners must be <= 1" in captured.err


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--preset", "sop", "--data-dir", str(tmp_path / "nope"),
                     "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


class _ByPath:
    """A stand-in model that places each image at a point chosen by hand from its file name,
    so every protocol has a hand-computed answer (and a wrong protocol another one)."""

    def __init__(self, position):
        self.position = position

    def embed(self, images, batch_size=256):
        x = np.array([self.position(str(p)) for p in images.paths], np.float32)
        return np.stack([x, np.zeros_like(x)], axis=1)


def test_vehicleid_is_evaluated_per_test_list(tmp_path, replicas):
    root = replicas.vehicleid(tmp_path / "VehicleID_V1.0")
    config = TrainConfig(dataset="vehicleid", data_dir=str(root), image_size=16)
    data = plan.build_plan(config)
    # Test images 10-15 are vehicles 20, 20, 21, 21, 22, 22 (tests/replicas.py), placed at:
    spots = {10: 0.0, 11: 1.0, 12: 1.2, 13: 3.0, 14: 3.1, 15: 6.0}
    model = _ByPath(lambda path: spots[int(path.rsplit("/", 1)[1][:7])])
    results = plan.evaluate(model, data.evaluations, data.recall_ks, nmi=False)
    assert list(results) == ["small", "medium", "large"]
    assert set(results["large"]) == {"R@1", "R@5", "MAP@R", "R-precision"}
    # Leave-one-out within each list. small {0, 1}: both hit. medium {0, 1 | 1.2, 3}: 0 -> 1
    # hit, 1 -> 1.2 miss, 1.2 -> 1 miss, 3 -> 1.2 hit. large adds {3.1, 6}: 3 -> 3.1 and
    # 3.1 -> 3 miss, 6 -> 3.1 hit.
    assert [results[k]["R@1"] for k in ("small", "medium", "large")] == pytest.approx(
        [1.0, 0.5, 2 / 6])
    assert [results[k]["MAP@R"] for k in ("small", "medium", "large")] == pytest.approx(
        [1.0, 0.5, 2 / 6])


def test_inshop_queries_search_the_gallery(tmp_path, replicas):
    root = replicas.inshop(tmp_path / "inshop")
    data = plan.build_plan(TrainConfig(dataset="inshop", data_dir=str(root), image_size=16))
    # Items 4, 5, 6: files 01, 02, 03 (tests/replicas.py); queries 4/01, 4/02, 5/01, 6/01,
    # 6/02, gallery 4/03, 5/02, 5/03, 6/03.
    spots = {(4, 1): 0.0, (4, 2): 10.0, (4, 3): 9.0, (5, 1): 5.0, (5, 2): 4.8, (5, 3): 30.0,
             (6, 1): 20.0, (6, 2): 21.0, (6, 3): 40.0}
    model = _ByPath(lambda path: spots[(int(path.split("id_")[1][:8]),
                                        int(path.rsplit("/", 1)[1][:2]))])
    results = plan.evaluate(model, data.evaluations, data.recall_ks, nmi=True)
    assert list(results) == ["test"] and "NMI" in results["test"]
    # Queries against the gallery only: 0 -> 4.8 (item 5) miss, 10 -> 9 hit, 5 -> 4.8 hit,
    # 20 -> 30 (item 5) miss, 21 -> 30 miss. MAP@R: R = 1, 1, 2, 1, 1 gallery items of the
    # query's item; 5 ranks 4.8 then 9: (1/2) * 1.
    assert results["test"]["R@1"] == pytest.approx(0.4)
    assert results["test"]["MAP@R"] == pytest.approx((0 + 1 + 0.5 + 0 + 0) / 5)


def test_short_training_on_disk_in_fair_comparison_mode(tmp_path, replicas, capsys):
    """Streams a replica through the whole job: a corrupt JPEG is skipped by name, the model is
    chosen on held-out training classes, In-shop queries are evaluated against the gallery."""
    root = replicas.inshop(tmp_path / "inshop", extra_train_items=5)
    broken = next((root / "img").rglob("id_00000008/*.jpg"))
    broken.write_bytes(broken.read_bytes()[:100])
    out = tmp_path / "run"
    argv = ["train", "--dataset", "inshop", "--data-dir", str(root), *SMALL, "--learners", "2",
            "--epochs", "2", "--classes-per-batch", "2", "--samples-per-class", "2",
            "--steps-per-epoch", "2", "--validation-classes", "0.25", "--cache-images",
            "--out", str(out), "--json"]
    with pytest.warns(UserWarning, match=rf"Skipping 1 unreadable image.*{broken.name}"):
        assert cli.main(argv) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["dataset"] == "inshop" and results["recall_ks"] == [1, 10, 20, 30, 40, 50]
    assert set(results["test"]) >= {"R@1", "R@50", "MAP@R", "NMI"}
    assert "raw_pixels" not in results
    assert results["skipped_files"] == {"train": [str(broken)]}
    assert results["selection"]["metric"] == "validation MAP@R"
    assert results["selection"]["epoch"] in (1, 2) and len(results["selection"]["history"]) == 2
    for name in ("model.keras", "best.weights.h5", "metrics.json", "config.json"):
        assert (out / name).exists(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["validation_classes"] == 0.25 and saved["cache_images"] is True
