"""build-index --index, index-add, index-remove, calibrate and search through the real CLI, on
the digits export: results against a numpy brute-force oracle over the export's embeddings."""

import json
import os
import shutil

import numpy as np
import pytest

from dnc_keras import cli
from dnc_keras.export import ExportedModel
from dnc_keras.export.index import EmbeddingIndex, list_gallery
from dnc_keras.export.manifest import model_hash


@pytest.fixture(scope="module")
def folders(digits, encode, tmp_path_factory):
    """PNG folders <class>/<image> of the five digits test classes A..E: the gallery holds A, B
    and C (8 images each); calibration: other images of A and class D (absent); test: other
    images of B and C and class E (absent): calibration and test share no class."""
    images, labels = digits
    a, b, c, d, e = np.unique(labels)
    root = tmp_path_factory.mktemp("open_set")
    plan = {"gallery": [(a, 0, 8), (b, 0, 8), (c, 0, 8)],
            "calibration": [(a, 8, 40), (d, 0, 32)],
            "test": [(b, 8, 40), (c, 8, 40), (e, 0, 32)],
            "extra": [(a, 40, 43)]}
    for name, parts in plan.items():
        for label, start, stop in parts:
            folder = root / name / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == label)[start:stop]:
                (folder / f"{i:04d}.png").write_bytes(encode(images[i]))
    return {name: str(root / name) for name in plan}


@pytest.fixture(scope="module")
def embedded(folders, export_dir):
    """{folder: (paths, labels, embeddings)} through the export's ONNX model, as build-index."""
    model = ExportedModel(export_dir, runtime="onnx")
    out = {}
    for name, folder in folders.items():
        paths, labels = list_gallery(folder)
        out[name] = (paths, np.asarray(labels), model.embed_files(paths))
    return out


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def nearest(gallery, queries):
    d = np.linalg.norm(queries[:, None] - gallery[None], axis=2)
    return d.min(1), d.argmin(1)


def oracle_threshold(distances, correct, known, target):
    """Straight from the definitions: of the thresholds at a query's distance whose precision
    reaches `target`, the one with the most recall (then the fewest answers), moved halfway
    to the next distance."""
    best = None
    for t in np.unique(distances):
        accepted = distances <= t
        hits = (accepted & correct).sum()
        if hits / accepted.sum() >= target - 1e-9:
            score = (hits / known.sum(), -accepted.sum())
            if best is None or score > best[0]:
                best = (score, t)
    if best is None:
        return None
    t = best[1]
    beyond = distances[distances > t]
    return (t + beyond.min()) / 2 if len(beyond) else t


def test_approximate_kinds_record_their_parameters(folders, embedded, export_dir, tmp_path,
                                                  capsys):
    index = tmp_path / "hnsw"
    code, out, err = run(capsys, "build-index", folders["gallery"], "--model", export_dir,
                         "--out", index, "--index", "hnsw", "--hnsw-m", 16, "--ef-search", 64,
                         "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["kind"] == "hnsw" and record["size"] == 24 and record["classes"] == 3
    assert record["parameters"] == {"M": 16, "efConstruction": 200, "efSearch": 64}
    assert record["tuning"] is None
    assert record["export"]["model_hash"] == model_hash(json.load(open(
        os.path.join(export_dir, "manifest.json"))))
    # On 24 items a beam of 64 sees them all: the same neighbours as brute force.
    paths, _, vectors = embedded["gallery"]
    queries, _, query_vectors = embedded["test"]
    code, out, _ = run(capsys, "search", index, *queries[:3], "-k", 4, "--json")
    d = np.linalg.norm(query_vectors[:3, None] - vectors[None], axis=2)
    for line, row in zip(out.splitlines(), d):
        found = json.loads(line)
        assert [m["path"] for m in found["matches"]] == [paths[j] for j in np.argsort(row)[:4]]
        assert [m["id"] for m in found["matches"]] == np.argsort(row)[:4].tolist()
        assert found["unknown"] is False and found["threshold"] is None

    code, out, err = run(capsys, "build-index", folders["gallery"], "--model", export_dir,
                         "--out", tmp_path / "ivf", "--index", "ivf")
    assert code == 0, err
    assert "ivf index of model" in out and "nlist=1, nprobe=1" in out and "not tuned" in out
    assert "IVF scans 100% of its lists per query" in out  # the advice against it
    code, _, err = run(capsys, "build-index", folders["gallery"], "--model", export_dir,
                       "--out", tmp_path / "bad", "--nlist", 4)
    assert code == 2 and "a flat index takes the parameters: none. Received: nlist=4" in err


def test_add_and_remove_without_a_rebuild(folders, export_dir, tmp_path, capsys):
    index = tmp_path / "index"
    assert run(capsys, "build-index", folders["gallery"], "--model", export_dir, "--out",
               index)[0] == 0
    extra, _ = list_gallery(folders["extra"])
    code, out, err = run(capsys, "index-add", index, *extra, "--label", "new", "--json")
    assert code == 0, err
    added = [json.loads(line) for line in out.splitlines()]
    assert [a["id"] for a in added] == [24, 25, 26] and {a["label"] for a in added} == {"new"}
    code, out, _ = run(capsys, "search", index, extra[0], "-k", 1, "--json")
    match = json.loads(out)["matches"][0]
    assert (match["id"], match["path"], match["label"]) == (24, extra[0], "new")
    assert match["distance"] < 1e-3

    gallery_paths, _ = list_gallery(folders["gallery"])
    code, out, err = run(capsys, "index-remove", index, "--ids", 24, "--paths",
                         gallery_paths[0])
    assert code == 0, err
    assert f"Removed 2 items from {index}; it holds 25" in out
    code, out, _ = run(capsys, "search", index, extra[0], gallery_paths[0], "-k", 25, "--json")
    for line in out.splitlines():
        ids = [m["id"] for m in json.loads(line)["matches"]]
        assert 24 not in ids and 0 not in ids and len(ids) == 25
    # Files whose paths the index holds (extra[1:], added above) are refused before anything
    # is embedded; --again adds them a second time.
    code, _, err = run(capsys, "index-add", index, folders["extra"])
    assert code == 2 and f"2 items already in {index}: {extra[1]}, {extra[2]}; pass --again" \
        in err
    assert len(EmbeddingIndex.load(str(index))) == 25
    # So is a file given twice in one call, here as itself and through its folder.
    fresh = tmp_path / "extra" / "classX" / "fresh.png"
    fresh.parent.mkdir(parents=True)
    shutil.copy(extra[0], fresh)
    code, _, err = run(capsys, "index-add", index, tmp_path / "extra",
                       f"{tmp_path}/extra/classX/../classX/fresh.png", "--label", "classX")
    assert code == 2 and f"1 item given twice: {tmp_path}/extra/classX/../classX/fresh.png; " \
        "pass --again" in err
    assert len(EmbeddingIndex.load(str(index))) == 25
    # A folder adds its classes; ids go on from where they were, never reused.
    code, out, _ = run(capsys, "index-add", index, folders["extra"], "--again")
    assert code == 0 and "Added 3 items (ids 27-29)" in out and "it holds 28" in out
    # --compact on a flat index: nothing to rebuild, and the output says so.
    code, out, _ = run(capsys, "index-add", index, fresh, "--label", "classX")
    assert code == 0 and "Added 1 item (id 30)" in out and "it holds 29" in out
    code, out, _ = run(capsys, "index-remove", index, "--ids", 27, 30, "--compact")
    assert code == 0 and f"Removed 2 items from {index}; it holds 27" in out
    assert "--compact: nothing to rebuild, a flat index deletes in place" in out

    for argv, message in [
        (["index-remove", index, "--ids", 999], "ids not in the index: 999"),
        (["index-remove", index], "give the items to remove with --ids and/or --paths"),
        (["index-remove", index, "--paths", "nowhere.png"], "no item of the index has the path"),
        (["index-add", index, extra[0]], "is a file: give its class with --label"),
        (["index-add", tmp_path / "no-index", extra[0], "--label", "x"], "index.json not found"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err


def test_calibrate_then_search_answers_unknown(folders, embedded, export_dir, tmp_path, capsys):
    index = tmp_path / "index"
    assert run(capsys, "build-index", folders["gallery"], "--model", export_dir, "--out",
               index)[0] == 0
    _, gallery_labels, gallery_vectors = embedded["gallery"]

    def outcomes(name):
        _, labels, vectors = embedded[name]
        distances, rows = nearest(gallery_vectors, vectors)
        return distances, gallery_labels[rows] == labels, np.isin(labels, gallery_labels)

    distances, correct, known = outcomes("calibration")
    assert known.any() and not known.all()  # calibration holds a class absent from the gallery
    target = next(t for t in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
                  if oracle_threshold(distances, correct, known, t) is not None)
    expected = oracle_threshold(distances, correct, known, target)

    code, out, err = run(capsys, "calibrate", index, "--data", folders["calibration"],
                         "--precision", target, "--test", folders["test"], "--json")
    assert code == 0, err
    report = json.loads(out)
    threshold = report["calibration"]["threshold"]
    assert threshold == pytest.approx(expected, abs=1e-5)
    assert report["calibration"]["calibrated_on"]["precision"] >= target

    distances, correct, known = outcomes("test")
    answered = distances <= threshold
    test = report["test"]
    assert test["classes_shared_with_calibration"] == 0
    assert test["queries"] == 96 and test["known_queries"] == 64 and test["unknown_queries"] == 32
    assert test["precision"] == pytest.approx((answered & correct).sum() / answered.sum())
    assert test["recall"] == pytest.approx((answered & correct).sum() / known.sum())
    assert test["unknown_rejection_rate"] == pytest.approx((~answered & ~known).sum() / 32)

    # search uses the stored threshold; --threshold inf turns it off.
    queries, _ = list_gallery(folders["test"])
    code, out, _ = run(capsys, "search", index, *queries, "-k", 2, "--json")
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["unknown"] for r in results] == (~answered).tolist()
    assert all(r["threshold"] == threshold for r in results)
    assert all((r["label"] is None) == r["unknown"] for r in results)
    assert all(len(r["matches"]) == 2 for r in results)  # the evidence is listed either way
    code, out, _ = run(capsys, "search", index, *queries[:5], "--threshold", "inf", "--json")
    assert not any(json.loads(line)["unknown"] for line in out.splitlines())
    code, out, _ = run(capsys, "search", index, queries[0], "--threshold", 0)
    assert f"{queries[0]}: unknown (nearest" in out and "> threshold 0.0000" in out

    code, out, _ = run(capsys, "calibrate", index, "--data", folders["calibration"],
                       "--precision", target, "--test", folders["test"])
    assert code == 0 and f"Threshold {threshold:.4f} stored in {index}" in out
    assert "; 0 classes shared with the calibration data" in out and "Note:" not in out
    # Data of gallery classes only cannot teach "unknown": allowed, with a note.
    code, out, _ = run(capsys, "calibrate", index, "--data", folders["extra"], "--precision",
                       0.3)
    assert code == 0 and f"Note: every class of {folders['extra']} is in the index" in out
    code, _, _ = run(capsys, "calibrate", index, "--data", folders["calibration"],
                     "--precision", target)
    assert code == 0

    for argv, message in [
        (["calibrate", index, "--data", folders["gallery"]], "are items of the index"),
        (["calibrate", index, "--data", folders["calibration"], "--precision", 1.5],
         "precision must be in (0, 1]. Received: precision=1.5"),
        (["search", index, queries[0], "--threshold", -1], "threshold must be a distance >= 0"),
        (["calibrate", index, "--data", tmp_path / "nowhere"],
         f"--data folder {tmp_path / 'nowhere'} not found"),
        (["calibrate", index, "--data", folders["calibration"], "--test", tmp_path / "nowhere"],
         f"--test folder {tmp_path / 'nowhere'} not found"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err

    # A second build-index into the folder would lose the calibrated threshold: refused
    # before any embedding, unless --overwrite.
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    code, _, err = run(capsys, "build-index", folders["gallery"], "--model", export_dir,
                       "--out", index, "--index", "hnsw")
    assert code == 2 and f"--out {index} already holds an index; pass --overwrite" in err
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert run(capsys, "build-index", folders["gallery"], "--model", export_dir, "--out", index,
               "--overwrite", "--json")[0] == 0
    assert json.loads((index / "index.json").read_text())["calibration"] is None
    # A file, or a folder of other files, is not an index folder.
    for out, message in [(index / "index.json", "is a file"),
                         (folders["gallery"], "is a folder of other files")]:
        code, _, err = run(capsys, "build-index", folders["gallery"], "--model", export_dir,
                           "--out", out)
        assert code == 2 and f"--out {out} {message}" in err and "Traceback" not in err


def test_search_refuses_queries_of_another_model(folders, export_dir, tmp_path, capsys):
    """The export folder the index recorded now holds another model: refused, both named."""
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    index = tmp_path / "index"
    assert run(capsys, "build-index", folders["gallery"], "--model", copy, "--out",
               index)[0] == 0
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    before = model_hash(manifest)
    # As a re-export changes it: other ONNX bytes, and the manifest's hash of them.
    import hashlib

    import onnx

    onnx_path = copy / manifest["onnx"]["path"]
    model = onnx.load(str(onnx_path))
    model.metadata_props.add(key="re-exported", value="yes")
    onnx.save(model, str(onnx_path))
    manifest["artifacts"][manifest["onnx"]["path"]] = hashlib.sha256(
        onnx_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    after = model_hash(manifest)
    query = list_gallery(folders["test"])[0][0]
    for argv in (["search", index, query], ["index-add", index, query, "--label", "x"],
                 ["calibrate", index, "--data", folders["calibration"]]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert f"is model {after[:16]}, but this index holds" in err
        assert f"holds vectors of model {before[:16]}" in err
