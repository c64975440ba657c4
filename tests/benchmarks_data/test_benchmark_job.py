"""The main job and CLI on tiny replicas: dry runs of the presets, the per-dataset evaluation
protocols, and one short training through the on-disk pipeline in the fair-comparison mode."""

import json

import numpy as np
import pytest

from dnc_keras import cli, plan
from dnc_keras.config import TrainConfig

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
    assert "40 classes x 2 images = 80; 1 steps per epoch x 100 epochs" in text
    assert "epoch 2: K=2" in text and "epoch 4: K=4" in text and "epoch 44: K=4 conquer" in text
    assert "shorter side 256, centre crop 224" in text and "R@1,2,4,8, MAP@R, NMI" in text
    assert not (tmp_path / "runs").exists()


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
    assert facts["k_schedule"][0] == {"epoch": 0, "K": 2, "event": "k-means into 2 clusters"}
    assert facts["model_selection"].startswith("best validation MAP@R")
    assert facts["seeds"] == [0, 1, 2]


def test_dry_run_reports_too_many_learners(tmp_path, replicas, capsys):
    root = replicas.vehicleid(tmp_path / "VehicleID_V1.0")
    assert cli.main(["train", "--preset", "vehicleid", "--data-dir", str(root),
                     "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "Evaluation small: 2 queries (leave-one-out): R@1,5" in captured.out
    assert "Evaluation large: 6 queries" in captured.out
    assert "learners must be <= 1 for these 3 training classes" in captured.err


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--preset", "sop", "--data-dir", str(tmp_path / "nope"),
                     "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sop_preset_reaches_32_learners_at_epoch_10():
    schedule = plan.k_schedule(TrainConfig.resolve(preset="sop"))
    assert [(e, k) for e, k, _ in schedule] == [(0, 1), (2, 2), (4, 4), (6, 8), (8, 16),
                                                (10, 32), (80, 32)]


class _MeanColour:
    """A stand-in model whose embedding is an image's normalised mean colour."""

    def embed(self, images, batch_size=256):
        x = np.asarray(images).mean(axis=(1, 2))
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_vehicleid_is_evaluated_per_test_list(tmp_path, replicas):
    root = replicas.vehicleid(tmp_path / "VehicleID_V1.0")
    config = TrainConfig(dataset="vehicleid", data_dir=str(root), image_size=16)
    data = plan.build_plan(config)
    results = plan.evaluate(_MeanColour(), data.evaluations, data.recall_ks, nmi=False)
    assert list(results) == ["small", "medium", "large"]
    assert set(results["large"]) == {"R@1", "R@5", "MAP@R", "R-precision"}
    # each vehicle's images share a colour: retrieval by colour is perfect
    assert all(m["R@1"] == 1.0 for m in results.values())


def test_inshop_queries_search_the_gallery(tmp_path, replicas):
    root = replicas.inshop(tmp_path / "inshop")
    data = plan.build_plan(TrainConfig(dataset="inshop", data_dir=str(root), image_size=16))
    results = plan.evaluate(_MeanColour(), data.evaluations, data.recall_ks, nmi=True)
    assert list(results) == ["test"] and results["test"]["R@1"] == 1.0
    assert results["test"]["MAP@R"] == 1.0 and "NMI" in results["test"]


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
