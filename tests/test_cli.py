import json
import os
import re
import subprocess
import sys
import time
import tomllib

import keras
import numpy as np
import pytest
import tensorflow as tf
from events import scalars
from PIL import Image

from dnc_keras import cli
from dnc_keras.training.config import TrainConfig

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


def _option_helps():
    """(command, flag, help line as printed, action) of every option of every command."""
    from dnc_keras_cli import build_parser

    commands = next(a for a in build_parser()._actions if a.choices and a.dest == "command")
    for name, sub in commands.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.option_strings and action.help and action.dest not in ("help", "version"):
                yield name, action.option_strings[-1], formatter._expand_help(action), action


def test_every_option_with_a_default_shows_it_once_and_none_shows_none():
    """Every value-taking option of every command says its default in --help, once (its own
    words or argparse's "(default: ...)"), and none says "(default: None)": a flag without a
    value, a required one or a switch has nothing to show."""
    from dnc_keras_cli.options import TRAIN_OPTIONS

    train_flags = {option.cli_flag for option in TRAIN_OPTIONS}
    checked = 0
    for command, flag, text, action in _option_helps():
        where = f"{command} {flag}: {text!r}"
        assert "(default: None)" not in text and "(default: [])" not in text, where
        assert "(default: False)" not in text, where
        assert text.count("default") <= 1, where
        # train's flags default to None in argparse (a --config or --preset may set them) and
        # name their own default.
        has_value = action.default not in (None, False, [])
        if (has_value and not action.required) or (command == "train"
                                                  and train_flags & set(action.option_strings)):
            assert "default" in text, where
            checked += 1
    assert checked >= len(train_flags) + 10


def test_a_recipe_search_run_never_evaluates_the_test_classes(tmp_path, capsys, monkeypatch):
    from dnc_keras.training import job

    evaluated = []
    monkeypatch.setattr(job, "evaluate", lambda *args, **kwargs: evaluated.append(args))
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--learners", "1", "--validation-classes", "0.4",
                     "--no-test-evaluation", "--no-plots", "--out", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated == [] and "test" not in results and "raw_pixels" not in results
    assert results["selection"]["metric"] == "validation MAP@R"
    assert 0 <= results["selection"]["value"] <= 1
    assert json.loads((out / "config.json").read_text())["test_evaluation"] is False

def test_train_json_run_folder_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # progress went to stderr
    results = json.loads(lines[0])
    assert set(results["test"]) >= {"R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI"}
    assert results["test_classes"] == 5 and results["learners"] == 2
    for name in ("config.json", "metrics.json", "history.json", "model.keras",
                 "checkpoints/checkpoint", "preprocessing.json", "provenance.json"):
        assert (out / name).exists(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["embedding_dim"] == 16 and saved["dataset"] == "digits"
    assert json.loads((out / "metrics.json").read_text())["test"] == results["test"]
    history = json.loads((out / "history.json").read_text())
    assert set(history) == {"loss", "overlap", "learners", "nonfinite", "dnc_actions"}
    assert history["nonfinite"] == [0.0, 0.0]
    assert len(history["loss"]) == 2 and history["learners"] == [1.0, 1.0]
    # Epoch 1 is the conquer (the last 20% of 2 epochs); division would come at epoch 2.
    assert [(a["epoch"], a["action"], a["status"]) for a in history["dnc_actions"]] == [
        (1, "conquer", "done")]
    # The plots: one panel per logged quantity (3 x 320 x 300 px), the t-SNE 600 x 600 px.
    with Image.open(out / "training_curves.png") as curves:
        assert curves.size == (960, 300)
    with Image.open(out / "test_embeddings.png") as tsne:
        assert tsne.size == (600, 600)
    for name in ("neighbours.png", "class_recall.png", "clusters.png"):
        assert (out / name).stat().st_size > 0, name
    # The projector holds the test embeddings the model computes now.
    import keras
    from dnc_keras.training.plan import build_plan

    model = keras.saving.load_model(out / "model.keras")
    images, labels = build_plan(TrainConfig.from_file(str(out / "config.json"))).test_pixels
    reader = tf.train.load_checkpoint(str(out / "logs" / "projector"))
    np.testing.assert_allclose(reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE"),
                               model.embed(images), atol=1e-6)
    assert (out / "logs" / "projector" / "metadata.tsv").read_text().split() == \
        [str(v) for v in labels]
    # TensorBoard shows the same per-epoch loss as history.json.
    logged = scalars(out / "logs")
    assert [v for _, v in sorted(logged["epoch_loss"])] == pytest.approx(history["loss"])

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
    (["--dataset", "digits", "--learners", "8", "--epochs", "1"], "so learners must be <= 2"),
    (["--learners", "3", "--progressive"], "power of 2"),
    (["--dataset", "omniglot", "--data-dir", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
])
def test_bad_input_gets_a_clear_error(argv, message, tmp_path, capsys):
    assert cli.main(["train", *argv, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_names_a_missing_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json not found" in err and str(tmp_path) in err


def _write_png_classes(root, classes, per_class):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12), np.uint8)).save(
                root / f"c{c}" / f"{i}.png")


def test_user_errors_are_one_line(tmp_path, capsys):
    """Each mistake a user makes with a run folder or data gets one line naming it (exit 2)."""
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    (corrupt / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    two_classes = tmp_path / "two"
    _write_png_classes(two_classes, classes=2, per_class=3)
    cases = [
        (["evaluate", str(unfinished)],
         f"{unfinished} holds an unfinished run (no model.keras yet): run the same `dnc-keras "
         "train` command again to resume it"),
        (["evaluate", str(corrupt)],
         f"cannot load {corrupt / 'model.keras'}: not a readable .keras archive (truncated or "
         "corrupt); train the run again with --overwrite"),
        (["train", "--out", str(a_file)],
         f"--out {a_file} is a file, not a folder: choose another --out"),
        (["embed", str(tmp_path / "nowhere"), str(a_file)],
         f"{tmp_path / 'nowhere'} does not exist: expected a run folder (dnc-keras train) or an "
         "export folder (dnc-keras export, e.g. saved_models/NAME)"),
        (["train", "--dataset", "folder", "--data-dir", str(two_classes), "--out",
          str(tmp_path / "r")],
         "the training split has 1 class(es), 1 with at least 2 images; training needs at "
         "least 2 such classes (the standard split trains on half of the classes: give more "
         "classes, or --train-classes all)"),
        (["train", "--dataset", "digits", "--learners", "4", "--out", str(tmp_path / "r")],
         "learners=4 needs 8 training classes with at least 2 images (2 per learner); the "
         "training split has 5 of 5, so learners must be <= 2"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"dnc-keras {argv[0]}: error: {message}\n", err
    assert not (tmp_path / "r").exists()  # nothing written before the inputs were checked


def test_augment_changes_training_and_is_recorded(tmp_path, capsys):
    plain, augmented = tmp_path / "plain", tmp_path / "augmented"
    assert cli.main(["train", *TINY, "--no-plots", "--out", str(plain), "--json"]) == 0
    assert cli.main(["train", *TINY, "--no-plots", "--augment", "--out", str(augmented),
                     "--json"]) == 0
    capsys.readouterr()
    assert json.loads((augmented / "config.json").read_text())["augment"] is True
    losses = [json.loads((run / "history.json").read_text())["loss"]
              for run in (plain, augmented)]
    # Same seed, same batches: only the augmentation differs, so the losses do.
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)


def test_evaluate_on_another_folder_equals_the_models_own_embeddings(tmp_path, capsys):
    import image_corpus
    import keras
    import numpy as np

    from dnc_keras.evaluation import retrieval_metrics
    from dnc_keras.preprocessing import load_files

    trained_on, evaluated_on = tmp_path / "a", tmp_path / "b"
    image_corpus.write_photo_folder(trained_on, classes=6, per_class=4, seed=0)
    files = image_corpus.write_photo_folder(evaluated_on, classes=6, per_class=4, seed=1)
    run = tmp_path / "run"
    small = ["--image-size", "24", "--epochs", "1", "--learners", "1", "--embedding-dim", "8",
             "--classes-per-batch", "3", "--samples-per-class", "2", "--steps-per-epoch", "3",
             "--no-plots"]
    assert cli.main(["train", "--dataset", "folder", "--data-dir", str(trained_on), *small,
                     "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--data-dir", str(evaluated_on), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test"]
    # The oracle: the saved model on the record's images of b's test classes (the last 3).
    model = keras.saving.load_model(run / "model.keras")
    test_files = [f for f in files if int(f.split("scene")[1].split("/")[0]) >= 3]
    labels = np.array([int(f.split("scene")[1].split("/")[0]) for f in test_files])
    expected = retrieval_metrics(model.embed(load_files(test_files, model.preprocessing)),
                                 labels)
    for name in ("R@1", "MAP@R", "NMI"):
        assert got[name] == pytest.approx(expected[name], abs=1e-6)
    # --classes all: every class of the folder, each image a query against all the others.
    assert cli.main(["evaluate", str(run), "--data-dir", str(evaluated_on), "--classes", "all",
                     "--json"]) == 0
    every = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    labels = np.array([int(f.split("scene")[1].split("/")[0]) for f in files])
    expected = retrieval_metrics(model.embed(load_files(files, model.preprocessing)), labels)
    assert every["classes"] == "all" and every["test_classes"] == 6
    for name in ("R@1", "MAP@R", "NMI"):
        assert every["test"][name] == pytest.approx(expected[name], abs=1e-6)
    # Another dataset makes other images than the model was trained on: refused, named.
    assert cli.main(["evaluate", str(run), "--dataset", "digits"]) == 2
    assert "trained on images made by RGB" in capsys.readouterr().err


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEAVY = ("tensorflow", "keras", "numpy", "dnc_keras")
_HELP_CHILD = """
import json, runpy, sys
sys.argv = ["dnc-keras"] + {argv!r}
try:
    runpy.run_module("dnc_keras_cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}),
      file=sys.stderr)
"""


def _cli_process(*argv, code=None):
    """(stdout, stderr, wall seconds) of `python -m dnc_keras_cli ARGV` (or of `code`)."""
    env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable] + (["-c", code] if code else ["-m", "dnc_keras_cli", *argv])
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr, seconds


def test_version_is_the_packages():
    with open(os.path.join(_REPO, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    stdout, stderr, _ = _cli_process("--version")
    assert stdout == f"dnc-keras {version}\n" and stderr == ""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_is_quick_quiet_and_loads_no_tensorflow(argv):
    # The parser lives in dnc_keras_cli, which imports nothing heavy: help never waits for
    # TensorFlow (3-4 s) nor prints its start-up lines.
    _, stderr, _ = _cli_process(code=_HELP_CHILD.format(argv=argv, heavy=_HEAVY))
    assert json.loads(stderr) == {"code": 0, "heavy": []}
    # The bound, on the best of three runs of the real command (a loaded machine
    # delays single runs; a TensorFlow import would cost seconds).
    runs = [_cli_process(*argv) for _ in range(3)]
    assert all(stdout.startswith("usage: dnc-keras") and stderr == ""
               for stdout, stderr, _ in runs)
    assert min(seconds for _, _, seconds in runs) < 0.5


@pytest.mark.parametrize("source", ["pass", "training"])
def test_recluster_features_through_the_cli(tmp_path, capsys, source):
    """--recluster-features reaches the schedule: a full pass embeds every training image at
    each re-clustering; the train steps' features leave only the images whose row is too old."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "3", "--learners", "2",
            "--no-progressive", "--recluster-period", "1", "--embedding-dim", "16",
            "--classes-per-batch", "4", "--samples-per-class", "4", "--steps-per-epoch", "6",
            "--conquer-fraction", "0", "--recluster-features", source, "--no-plots",
            "--no-nmi", "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    assert json.loads((out / "config.json").read_text())["recluster_features"] == source
    actions = json.loads((out / "history.json").read_text())["dnc_actions"]
    assert [(a["epoch"], a["action"], a["status"]) for a in actions] == [
        (0, "cluster", "done"), (1, "recluster", "done"), (2, "recluster", "done")]
    everything = actions[0]["embedded"]  # the first clustering embeds every training image
    assert everything > 6 * 16
    if source == "pass":
        assert [a["embedded"] for a in actions[1:]] == [everything, everything]
    else:
        # Epoch 1: every row was new at the first clustering and serves once more. Epoch 2:
        # only the images neither epoch drew (an epoch draws 6 x 16 images, some twice).
        assert actions[1]["embedded"] == 0
        assert everything - 2 * 6 * 16 <= actions[2]["embedded"] < everything


def test_the_dry_run_names_the_clustering_route(capsys):
    assert cli.main(["train", "--dataset", "digits", "--learners", "2", "--dry-run"]) == 0
    assert ("Clustering: k-means on the backbone features the train steps computed (a pass "
            "only for rows too old); walk batches (each cluster's images without replacement)"
            ) in capsys.readouterr().out
    assert cli.main(["train", "--dataset", "digits", "--learners", "2",
                     "--recluster-features", "pass", "--dry-run"]) == 0
    assert "of a full pass over the training images; random batches" in capsys.readouterr().out


def test_the_papers_epoch_through_the_cli(tmp_path, capsys):
    """--epoch-length largest: each epoch trains K x the largest cluster's batches of the
    clusters its re-clustering left (history.json's cluster sizes), and nothing more."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "3", "--learners", "2",
            "--no-progressive", "--recluster-period", "1", "--embedding-dim", "16",
            "--classes-per-batch", "4", "--samples-per-class", "4", "--conquer-fraction", "0",
            "--epoch-length", "largest", "--no-plots", "--no-nmi", "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads((out / "config.json").read_text())["epoch_length"] == "largest"
    actions = json.loads((out / "history.json").read_text())["dnc_actions"]
    assert [a["epoch"] for a in actions] == [0, 1, 2]
    expected = [len(a["cluster_sizes"]) * (max(a["cluster_sizes"]) // 16) for a in actions]
    printed = capsys.readouterr().out
    for epoch, steps in enumerate(expected):
        assert re.search(rf"Epoch {epoch + 1}/3\n{steps}/{steps} ", printed), printed
    model = keras.models.load_model(out / "model.keras")
    assert int(model.optimizer.iterations) == sum(expected)


def test_an_interrupted_papers_epoch_run_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Stopped inside epoch 2 (after the division at its start), the same command again resumes
    from epoch 1's checkpoint, re-runs nothing the checkpoint holds, and ends with the
    uninterrupted run's weights and clusters."""
    import keras

    argv = ["train", "--dataset", "digits", "--epochs", "4", "--learners", "2",
            "--embedding-dim", "16", "--classes-per-batch", "4", "--samples-per-class", "4",
            "--epoch-length", "largest", "--no-plots", "--no-nmi", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    batches = {"n": 0}
    begin = keras.callbacks.CallbackList.on_train_batch_begin

    def stop(self, batch, logs=None):
        batches["n"] += 1
        if batches["n"] == 2 * (901 // 16) + 3:  # 3 steps into epoch 2, the first with K = 2
            raise KeyboardInterrupt
        return begin(self, batch, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_train_batch_begin", stop)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        cli.main([*argv, "--out", str(out)])
    monkeypatch.undo()
    assert cli.main([*argv, "--out", str(out)]) == 0
    whole, resumed = (keras.models.load_model(tmp_path / name / "model.keras")
                      for name in ("whole", "resumed"))
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert int(resumed.optimizer.iterations) == int(whole.optimizer.iterations)
    assert json.loads((out / "metrics.json").read_text())["resumed_from"]["epoch"] == 2
    whole, resumed = ([{k: v for k, v in a.items() if k != "seconds"} for a in json.loads(
        (tmp_path / name / "history.json").read_text())["dnc_actions"]]
        for name in ("whole", "resumed"))
    assert resumed == whole and whole[0]["action"] == "divide"


def test_a_diverged_run_stops_then_resumes_saying_so(tmp_path, capsys, monkeypatch):
    """NaN weights before the 8th batch (epoch 1, step 1): exit 2, one line naming where, no
    model.keras (benchmarks/bench_faults.py injects the same at random points); the same
    command again resumes from the last good checkpoint and says where."""
    import keras

    batches = {"n": 0}
    begin = keras.callbacks.CallbackList.on_train_batch_begin

    def poison(self, batch, logs=None):
        batches["n"] += 1
        if batches["n"] == 8:
            variable = self.model.encoder.trainable_variables[0]
            variable.assign(tf.fill(variable.shape, float("nan")))
        return begin(self, batch, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_train_batch_begin", poison)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--no-plots", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "dnc-keras train: error: training diverged at epoch 1 step 1"), err
    assert not (out / "model.keras").exists()
    # The same command again resumes from the last good checkpoint (epoch 0's end: 6 steps)
    # and says so before training on.
    monkeypatch.undo()
    assert cli.main(["train", *TINY, "--no-plots", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"Resuming {out}: 1 of 2 epochs done (ckpt-6)" in lines
    assert (out / "model.keras").exists()
    # A built-in dataset's run evaluated with only --data-dir: told how to name a folder.
    assert cli.main(["evaluate", str(out), "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"dnc-keras evaluate: error: {out} was trained on digits, which is built in: to "
        f"evaluate on a folder of <class>/<image> files, pass --dataset folder --data-dir "
        f"{tmp_path}\n")


def test_train_skip_unreadable_leaves_a_broken_file_out_of_a_folder(tmp_path, capsys):
    import image_corpus

    folder = tmp_path / "photos"
    image_corpus.write_photo_folder(folder, classes=6, per_class=4, seed=0)
    broken = folder / sorted(p.name for p in folder.iterdir())[0] / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 garbage")
    argv = ["train", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "24",
            "--learners", "1", "--dry-run", "--json"]  # the dry run reads a folder as training does
    assert cli.main(argv) == 2
    recipe, *error = capsys.readouterr().err.strip().splitlines()  # --json: the recipe on stderr
    assert recipe.startswith("folder recipe (")
    assert len(error) == 1 and "broken.jpg" in error[0] and "--skip-unreadable" in error[0]
    with pytest.warns(UserWarning, match="Skipped 1 unreadable image file"):
        assert cli.main(argv + ["--skip-unreadable"]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["splits"] == {"train": [12, 3], "test": [12, 3]}
