"""serving/gallery_search.py and the clients' --index: an index searched without dnc_keras
gives the answers EmbeddingIndex gives, honours the calibrated threshold and the ids an HNSW
index hides, and refuses an index made by another model."""

import json
import math
import os

import numpy as np
import pytest

from dnc_keras.export.index import EmbeddingIndex, list_gallery
from dnc_keras.export.manifest import model_hash


@pytest.fixture(scope="module")
def queries(digits, encode, gallery, tmp_path_factory):
    """Six gallery files (found at distance 0) and six other digits images as PNG files."""
    images, labels = digits
    folder = tmp_path_factory.mktemp("queries")
    others = []
    for label in np.unique(labels)[:3]:
        for i in np.flatnonzero(labels == label)[20:22]:
            path = folder / f"{label}_{i}.png"
            path.write_bytes(encode(images[i]))
            others.append(str(path))
    return list_gallery(gallery)[0][::7][:6] + others


@pytest.fixture(scope="module")
def index_dir(gallery, export_dir, queries, tmp_path_factory):
    """A flat index of the gallery whose threshold makes some of the other images unknown."""
    index = EmbeddingIndex.from_folder(gallery, export_dir)
    nearest = index.search_files(queries[6:], k=1, threshold=math.inf).distances[:, 0]
    index.calibration = {"threshold": float(np.median(nearest))}
    folder = str(tmp_path_factory.mktemp("served_index"))
    index.save(folder)
    return folder


def expected(index_dir, queries, k):
    """EmbeddingIndex's answers, the reference."""
    found = EmbeddingIndex.load(index_dir).search_files(queries, k=k)
    return [{"label": None if found.unknown[i] else found.labels[i, 0],
             "unknown": bool(found.unknown[i]), "threshold": found.threshold,
             "ids": found.ids[i].tolist(), "distances": found.distances[i]}
            for i in range(len(queries))]


def check(results, reference):
    assert len(results) == len(reference)
    for got, want in zip(results, reference):
        assert (got["label"], got["unknown"], got["threshold"]) == \
            (want["label"], want["unknown"], want["threshold"])
        assert [m["id"] for m in got["matches"]] == want["ids"]
        np.testing.assert_allclose([m["distance"] for m in got["matches"]], want["distances"],
                                   atol=1e-4)


def test_model_hash_is_dnc_keras_own(serving_modules, export_dir):
    from gallery_search import model_hash as served_hash

    with open(os.path.join(export_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert served_hash(manifest) == model_hash(manifest)


def test_grpc_client_searches_the_index(serving_modules, grpc_target, export_dir, index_dir,
                                        queries, capsys):
    reference = expected(index_dir, queries, 3)
    assert any(r["unknown"] for r in reference) and not all(r["unknown"] for r in reference)
    assert serving_modules["grpc_client"].main(
        ["--server", grpc_target, "--model", "digits", "--index", index_dir, "-k", "3",
         "--manifest", os.path.join(export_dir, "manifest.json"), *queries]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == queries
    check(lines, reference)
    assert all(m["path"] for line in lines for m in line["matches"])


def test_rest_client_threshold_override(serving_modules, rest_url, index_dir, queries, capsys):
    assert serving_modules["rest_client"].main(
        ["--url", rest_url, "--model", "digits", "--index", index_dir, "--threshold", "inf",
         *queries[6:]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not any(line["unknown"] for line in lines)
    assert all(line["label"] == line["matches"][0]["label"] for line in lines)


def test_hidden_hnsw_items_stay_hidden(serving_modules, gallery, export_dir, queries, tmp_path):
    from gallery_search import GalleryIndex

    index = EmbeddingIndex.from_folder(gallery, export_dir, kind="hnsw")
    vectors = index.model().embed_files(queries)
    first = index.search(vectors, k=1).ids[:, 0]
    index.remove(np.unique(first[:6]))  # the gallery files found themselves
    assert len(index.hidden) == len(np.unique(first[:6]))
    index.save(str(tmp_path))
    served = GalleryIndex(str(tmp_path)).search(vectors, k=4)
    reference = index.search(vectors, k=4)
    for got, ids in zip(served, reference.ids):
        assert [m["id"] for m in got["matches"]] == ids.tolist()
        assert not set(index.hidden.tolist()) & {m["id"] for m in got["matches"]}


def test_another_model_and_missing_index_are_refused(serving_modules, grpc_target, export_dir,
                                                     index_dir, queries, tmp_path, capsys):
    with open(os.path.join(export_dir, "manifest.json")) as f:
        manifest = json.load(f)
    ours = model_hash(manifest)
    manifest["artifacts"][manifest["onnx"]["path"]] = "0" * 64
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps(manifest))
    client = serving_modules["grpc_client"]
    assert client.main(["--server", grpc_target, "--model", "digits", "--index", index_dir,
                        "--manifest", str(other), queries[0]]) == 2
    err = capsys.readouterr().err
    assert f"the served model {model_hash(manifest)[:16]}" in err and ours[:16] in err
    assert client.main(["--server", grpc_target, "--model", "digits", "--index",
                        str(tmp_path / "none"), queries[0]]) == 2
    assert "index.json: cannot read" in capsys.readouterr().err


def test_k_below_one_is_refused(serving_modules, grpc_target, index_dir, queries, capsys):
    """The clients refuse -k 0 in one line, before any request; GalleryIndex.search raises
    (it used to answer one match for k = 0)."""
    from gallery_search import GalleryIndex

    client = serving_modules["grpc_client"]
    assert client.main(["--server", grpc_target, "--model", "digits", "--index", index_dir,
                        "-k", "0", queries[0]]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(": error: -k must be >= 1. Received: -k 0")
    index = GalleryIndex(index_dir)
    with pytest.raises(ValueError, match="k must be an integer >= 1. Received: k=0"):
        index.search(np.zeros((1, index._index.d), np.float32), k=0)


def test_the_module_run_as_a_script_says_what_it_is():
    """`python serving/gallery_search.py --help` prints what the module does; arguments get one
    line pointing at the clients that search with it."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "..", "serving", "gallery_search.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.startswith("Search an index written by")
    refused = subprocess.run([sys.executable, script, "index"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "gallery_search.py is a module and takes no arguments: search an index with "
        "grpc_client.py or rest_client.py --index INDEX (--help shows how)"]
