"""Omniglot: trained on 28x28 images resized from the 105x105 drawings, served on the raw
drawings. The export, in a new process, checks that both signatures and ONNX Runtime embed the
raw test files as the run's own evaluation did (parity), and retrieve as well (MAP@R)."""

import json

from steps import dnc

from dnc_keras.export.parity import PARITY_TOLERANCE


def test_omniglot_served_on_raw_drawings_as_trained(tmp_path, omniglot_dir):
    run_dir = tmp_path / "runs" / "omniglot"
    results = json.loads(dnc("train", "--dataset", "omniglot", "--data-dir", omniglot_dir,
                             "--epochs", "1", "--learners", "2", "--out", run_dir, "--no-plots",
                             "--json", cwd=tmp_path))
    manifest = json.loads(dnc("export", run_dir, "--name", "omniglot", "--out", tmp_path / "sm",
                              "--json", cwd=tmp_path))
    assert manifest["preprocessing"]["size"] == [28, 28] and manifest["preprocessing"]["invert"]
    parity = manifest["parity"]
    assert "105x105" in parity["sizes"] and parity["names"][0].endswith(".png")
    assert max(parity["max_abs_diff"].values()) <= PARITY_TOLERANCE
    assert {"savedmodel serving_bytes", "savedmodel serving_default, one image",
            "onnxruntime, one image"} <= set(parity["max_abs_diff"])
    for runtime in ("savedmodel", "onnx"):
        row = manifest["quality"][runtime]["agreement"]["evaluations"]["test"]
        assert row["run MAP@R"] == results["test"]["MAP@R"] and row["gap"] <= 0.005
