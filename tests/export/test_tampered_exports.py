"""A tampered or damaged export is refused by name wherever it is loaded: `ExportedModel` on
both runtimes, `dnc-keras validate-export` (exit 2, naming the failed check), an index that
loads it, and edge_infer.py reading the ONNX file beside its manifest. Each case is a copy of
the session's export with one thing changed."""

import os
import shutil

import pytest

from dnc_keras import cli
from dnc_keras.export import ExportedModel, ManifestError
from dnc_keras_cli.options import BOUNDS_DEFAULTS
from json_files import edit_json


def edit_manifest(folder, change):
    edit_json(os.path.join(folder, "manifest.json"), change)


def flip_byte(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))


def _variables(folder):
    variables = os.path.join(folder, "1", "variables")
    return os.path.join(variables, next(f for f in sorted(os.listdir(variables))
                                        if f.startswith("variables.data")))


# case -> (how to tamper a copy, the check validate-export fails, what the error names,
#          the runtimes whose loading is refused)
CASES = {
    "absolute onnx path": (
        lambda d, src: edit_manifest(d, lambda m: m["onnx"].__setitem__(
            "path", os.path.join(src, "digits.onnx"))),
        "manifest", "must be relative", ("savedmodel", "onnx")),
    "../ onnx path": (
        lambda d, src: (os.makedirs(os.path.join(d, "..", "decoy"), exist_ok=True),
                        shutil.copy(os.path.join(src, "digits.onnx"),
                                    os.path.join(d, "..", "decoy", "other.onnx")),
                        edit_manifest(d, lambda m: m["onnx"].__setitem__(
                            "path", "../decoy/other.onnx"))),
        "manifest", "leaves the export folder", ("savedmodel", "onnx")),
    "symlink out of the folder": (
        lambda d, src: (os.remove(os.path.join(d, "digits.onnx")),
                        os.symlink(os.path.join(src, "digits.onnx"),
                                   os.path.join(d, "digits.onnx"))),
        "manifest", "leaves the export folder", ("savedmodel", "onnx")),
    "changed hash": (
        lambda d, src: edit_manifest(d, lambda m: m["artifacts"].__setitem__(
            "digits.onnx", "0" * 64)),
        "artifact hashes", "digits.onnx differs from the export", ("onnx",)),
    "modified ONNX bytes": (
        lambda d, src: flip_byte(os.path.join(d, "digits.onnx")),
        "artifact hashes", "digits.onnx differs from the export", ("onnx",)),
    "modified SavedModel variables": (
        lambda d, src: flip_byte(_variables(d)),
        "artifact hashes", "variables.data-00000-of-00001 differs from the export",
        ("savedmodel",)),
    "a file added to the version folder": (
        lambda d, src: open(os.path.join(d, "1", "variables", "extra"), "w").close(),
        "artifact hashes", "extra is not among the manifest's artifacts", ("savedmodel",)),
    "max_side lifted in the manifest": (
        lambda d, src: edit_manifest(d, lambda m: m["bounds"].__setitem__("max_side", 100000)),
        "bounds in the graphs",
        f"max_side {BOUNDS_DEFAULTS['max_side']} in the artifact, 100000 in the manifest",
        ("savedmodel", "onnx")),
    "missing key": (
        lambda d, src: edit_manifest(d, lambda m: m["bounds"].pop("max_pixels")),
        "manifest", "field 'bounds.max_pixels' is missing", ("savedmodel", "onnx")),
    "wrong type": (
        lambda d, src: edit_manifest(d, lambda m: m["embedding"].__setitem__("dim", "16")),
        "manifest", "field 'embedding.dim' must be an int", ("savedmodel", "onnx")),
    "bad JSON": (
        lambda d, src: open(os.path.join(d, "manifest.json"), "w").write('{"format": '),
        "manifest", "is not valid JSON", ("savedmodel", "onnx")),
}


@pytest.fixture(scope="module")
def tampered(export_dir, tmp_path_factory):
    """{case: the tampered copy DIR/digits} of the session's export."""
    root = tmp_path_factory.mktemp("tampered")
    copies = {}
    for i, (case, (tamper, *_)) in enumerate(CASES.items()):
        copy = root / f"case{i}" / "digits"
        shutil.copytree(export_dir, copy)
        tamper(str(copy), export_dir)
        copies[case] = str(copy)
    return copies


@pytest.mark.parametrize("case", list(CASES))
def test_loading_refuses_by_name(tampered, case):
    _, _, named, refused = CASES[case]
    for runtime in ("savedmodel", "onnx"):
        if runtime not in refused:
            continue
        with pytest.raises(ManifestError) as error:
            ExportedModel(tampered[case], runtime=runtime)
        message = str(error.value)
        assert named in message and "\n" not in message, (runtime, message)


@pytest.mark.parametrize("case", list(CASES))
def test_validate_export_fails_naming_the_check(tampered, case, capsys):
    _, check, named, _ = CASES[case]
    assert cli.main(["validate-export", tampered[case]]) == 2
    captured = capsys.readouterr()
    [error] = captured.err.strip().splitlines()
    assert error.startswith("dnc-keras validate-export: error:") and check in error
    failed = [line for line in captured.out.splitlines() if line.startswith("FAIL")]
    assert failed and failed[0].split()[1:1 + len(check.split())] == check.split()
    assert named in failed[0]


def test_an_untouched_copy_loads(export_dir, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(export_dir, copy)
    for runtime in ("savedmodel", "onnx"):
        assert ExportedModel(str(copy), runtime=runtime).embedding_dim == 16


def test_edge_script_refuses_an_onnx_file_its_manifest_disowns(tampered, serving_modules,
                                                                export_dir, tmp_path, capsys):
    edge = serving_modules["edge_infer"]
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8), 120).save(image)
    for case, named in (("modified ONNX bytes", "digits.onnx differs from the export"),
                        ("max_side lifted in the manifest", "other bounds"),
                        ("missing key", "field 'bounds.max_pixels' is missing"),
                        ("bad JSON", "not valid JSON")):
        assert edge.main([os.path.join(tampered[case], "digits.onnx"), str(image)]) == 2
        [error] = capsys.readouterr().err.strip().splitlines()
        assert error.startswith("edge_infer: error:") and named in error, (case, error)
    # A bare ONNX file that is not a model, with no manifest beside it: named, no traceback.
    broken = tmp_path / "alone" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    assert edge.main([str(broken), str(image)]) == 2
    assert "model.onnx: not a loadable ONNX model" in capsys.readouterr().err
    # The export folder instead of its .onnx file, and a thread count below 1: told what to pass.
    for argv, message in (([str(export_dir)], f"{export_dir} is a folder: expected the exported "
                           f".onnx file, e.g. {os.path.join(export_dir, 'digits.onnx')}"),
                          ([os.path.join(export_dir, "digits.onnx"), "--threads", "-1"],
                           "threads must be an integer >= 1. Received: -1")):
        assert edge.main([*argv, str(image)]) == 2
        assert capsys.readouterr().err == f"edge_infer: error: {message}\n"
    assert edge.main([os.path.join(export_dir, "digits.onnx"), str(image)]) == 0
    capsys.readouterr()
    # --compare: an image's distance to itself is 0 exactly.
    assert edge.main([os.path.join(export_dir, "digits.onnx"), str(image), str(image),
                      "--compare"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert rows == [["0.000", "0.000"], ["0.000", "0.000"]]


def test_an_index_refuses_its_export_once_changed(export_dir, gallery, tmp_path):
    from dnc_keras.export.index import EmbeddingIndex

    copy = tmp_path / "digits"
    shutil.copytree(export_dir, copy)
    folder = EmbeddingIndex.from_folder(gallery, str(copy), runtime="onnx").save(
        str(tmp_path / "index"))
    files = sorted(os.path.join(root, f) for root, _, fs in os.walk(gallery) for f in fs)
    assert EmbeddingIndex.load(folder).search_files(files[:1], k=1).paths[0, 0] == files[0]
    flip_byte(str(copy / "digits.onnx"))
    with pytest.raises(ManifestError, match="digits.onnx differs from the export"):
        EmbeddingIndex.load(folder).search_files(files[:1], k=1)
