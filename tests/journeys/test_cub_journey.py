"""A CUB-200-2011 replica in its original layout, photographs of mixed sizes: train with the cub
preset (shorter side, then centre crop; here 73 -> 64) on a Conv-4 for one epoch, export in a
new process, and the export's embeddings of the test files equal the run's own. The same with
ResNet-50 at the preset's 256 -> 224 is in the slow set (`python -m pytest -m slow
tests/journeys`), outside CI."""

import json

import pytest
from steps import dnc

from dnc_keras.export.parity import PARITY_TOLERANCE

from replicas import build_cub

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def cub_journey(tmp_path, backbone):
    root = build_cub(tmp_path / "CUB_200_2011", classes=8, per_class=4, photo_size=(300, 220))
    run_dir = tmp_path / "runs" / "cub"
    # The preset's crop at a smaller side for the Conv-4 (the suite's time): the seams tested
    # are the same; ResNet-50 keeps the preset's 256 -> 224.
    sizes = ["--resize-size", "73", "--image-size", "64"] if backbone == "conv4" else []
    dnc("train", "--preset", "cub", "--data-dir", root, "--backbone", backbone, *sizes,
        "--weights", "none", "--epochs", "1", "--learners", "2", "--embedding-dim", "16",
        "--classes-per-batch", "4", "--samples-per-class", "2", "--learning-rate", "1e-3",
        "--out", run_dir, "--no-plots", "--json", cwd=tmp_path)
    record = json.loads((run_dir / "preprocessing.json").read_text())
    expected = ("crop", 73, [64, 64]) if sizes else ("crop", 256, [224, 224])
    assert (record["fit"], record["resize_to"], record["size"]) == expected
    manifest = json.loads(dnc("export", run_dir, "--name", "cub", "--out", tmp_path / "sm",
                              "--json", cwd=tmp_path))
    parity = manifest["parity"]
    assert parity["names"][0].endswith(".jpg") and len(parity["sizes"]) > 8  # real photos
    assert max(parity["max_abs_diff"].values()) <= PARITY_TOLERANCE
    assert manifest["quality"]["savedmodel"]["agreement"]["agree"]
    assert manifest["quality"]["onnx"]["agreement"]["agree"]


def test_cub_replica_conv4(tmp_path):
    cub_journey(tmp_path, "conv4")


@pytest.mark.slow
def test_cub_replica_resnet50(tmp_path):
    cub_journey(tmp_path, "resnet50")
