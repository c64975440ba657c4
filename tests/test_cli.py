import json
import os

import pytest

from dnc_keras import cli
from dnc_keras.config import TrainConfig

TINY = ["--dataset", "digits", "--epochs", "2", "--learners", "2", "--embedding-dim", "16",
        "--classes-per-batch", "4", "--samples-per-class", "4", "--steps-per-epoch", "6"]


def test_help_lists_the_documented_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--train-classes", "--learners", "--subspaces",
                 "--epochs", "--classes-per-batch", "--samples-per-class", "--embedding-dim",
                 "--loss", "--seed", "--out", "--config", "--json"):
        assert flag in text


def test_train_json_run_folder_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # progress went to stderr
    results = json.loads(lines[0])
    assert set(results["test"]) >= {"R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI"}
    assert results["test_classes"] == 5 and results["learners"] == 2
    for name in ("config.json", "metrics.json", "history.json", "model.keras",
                 "checkpoint.weights.h5", "training_curves.png", "test_embeddings.png"):
        assert (out / name).exists(), name
    assert os.listdir(out / "logs")
    saved = json.loads((out / "config.json").read_text())
    assert saved["embedding_dim"] == 16 and saved["dataset"] == "digits"

    assert cli.main(["evaluate", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name, value in results["test"].items():
        assert evaluated["test"][name] == pytest.approx(value, abs=1e-6)


def test_config_file_with_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: digits\nepochs: 7\nlearners: 2\nloss: margin\n")
    config = TrainConfig.from_file(str(path), epochs=3)
    assert (config.dataset, config.epochs, config.learners, config.loss) == \
        ("digits", 3, 2, "margin")
    path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epochz'\]"):
        TrainConfig.from_file(str(path))


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "digits", "--learners", "8", "--epochs", "1"], "learners must be <= 2"),
    (["--learners", "3"], "power of 2"),
    (["--dataset", "omniglot", "--data-dir", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
])
def test_bad_input_gets_a_clear_error(argv, message, tmp_path, capsys):
    assert cli.main(["train", *argv, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_names_a_missing_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json not found" in err and str(tmp_path) in err
