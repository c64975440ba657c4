"""`dnc-keras export`, `validate-export`, `build-index` and `search` through the real CLI."""

import json
import os

import pytest

from dnc_keras import cli


def test_export_then_validate(trained_run, tmp_path, capsys):
    out = str(tmp_path / "models")
    assert cli.main(["export", trained_run, "--name", "glyphless", "--version", "3",
                     "--out", out, "--quantize", "float16"]) == 0
    printed = capsys.readouterr().out
    assert f"{out}/glyphless/3/" in printed and "float16" in printed and "MAP@R" in printed
    assert os.path.exists(os.path.join(out, "glyphless", "3", "saved_model.pb"))
    assert os.path.exists(os.path.join(out, "glyphless", "glyphless.onnx"))
    assert os.path.exists(os.path.join(out, "glyphless", "glyphless.float16.onnx"))

    from dnc_keras.export import validate

    real, validated = validate.validate_export, []

    def recorded(*args, **kwargs):
        validated.append(real(*args, **kwargs))
        return validated[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "validate_export", recorded)
        assert cli.main(["validate-export", os.path.join(out, "glyphless")]) == 0
    report = capsys.readouterr().out
    assert "FAIL" not in report and "variant float16" in report
    # --json: the same checks, one object each (the checks just run, not run again: they
    # take seconds).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "validate_export", lambda *a, **k: validated[0])
        assert cli.main(["validate-export", os.path.join(out, "glyphless"), "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in checks] == [line[5:].split("  ")[0].rstrip()
                                           for line in report.splitlines()]
    assert all(c["passed"] is True and isinstance(c["detail"], str) for c in checks)
    # `export --json` prints the manifest it writes: the journeys check it (tests/journeys).
    # The same version again is refused, cleanly.
    assert cli.main(["export", trained_run, "--name", "glyphless", "--version", "3",
                     "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err


def test_export_errors_are_clean(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "missing"), "--name", "x",
                     "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dnc-keras export: error: {tmp_path / 'missing'} does not exist: expected a run "
        "folder written by `dnc-keras train`")
    assert cli.main(["validate-export", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "FAIL manifest" in captured.out and "1 check(s) failed" in captured.err
    assert cli.main(["validate-export", str(tmp_path), "--json"]) == 2
    captured = capsys.readouterr()
    assert [(c["name"], c["passed"]) for c in json.loads(captured.out)] == [("manifest", False)]


def test_build_index_and_search(export_dir, gallery, tmp_path, capsys):
    index = str(tmp_path / "index")
    assert cli.main(["build-index", gallery, "--model", export_dir, "--out", index]) == 0
    assert "Indexed 40 images of 5 classes" in capsys.readouterr().out
    query = os.path.join(gallery, "class3", sorted(os.listdir(os.path.join(gallery,
                                                                           "class3")))[0])
    assert cli.main(["search", index, query, "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == query and len(result["matches"]) == 3
    assert result["matches"][0]["label"] == "class3" and result["matches"][0]["path"] == query
    assert cli.main(["search", index, str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_help_lists_the_export_commands(capsys):
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    for command in ("export", "validate-export", "build-index", "search", "index-add",
                    "index-remove", "calibrate"):
        assert command in text
