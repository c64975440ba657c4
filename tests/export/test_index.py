"""EmbeddingIndex: build from a gallery folder with an exported model, save, load, query."""

import os

import numpy as np
import pytest

from dnc_keras.export import ExportedModel
from dnc_keras.export.index import EmbeddingIndex, list_gallery


@pytest.fixture(scope="module")
def built(gallery, export_dir, tmp_path_factory):
    index = EmbeddingIndex.from_folder(gallery, export_dir, runtime="onnx")
    folder = str(tmp_path_factory.mktemp("index") / "digits.index")
    index.save(folder)
    return index, folder


def test_build_covers_the_gallery(built, gallery):
    index, _ = built
    paths, labels = list_gallery(gallery)
    assert len(index) == len(paths) == 40 and index.dim == 16
    assert sorted(set(index.labels.tolist())) == sorted(set(labels))
    assert index.export["name"] == "digits" and index.export["version"] == 1


def test_round_trip_returns_the_same_neighbours(built, gallery):
    index, folder = built
    loaded = EmbeddingIndex.load(folder)
    queries = sorted(os.path.join(gallery, "class2", f)
                     for f in os.listdir(os.path.join(gallery, "class2")))[:3]
    found = loaded.search_files(queries, k=4)
    direct = index.search_files(queries, k=4)
    np.testing.assert_array_equal(found.indices, direct.indices)
    np.testing.assert_allclose(found.distances, direct.distances, atol=1e-6)
    # A gallery image finds itself first, at distance 0.
    assert found.paths[:, 0].tolist() == queries
    assert np.allclose(found.distances[:, 0], 0.0, atol=1e-3)
    assert (found.labels[:, 0] == "class2").all()
    assert (np.diff(found.distances, axis=1) >= 0).all()


def test_distances_are_euclidean_between_unit_vectors(built, export_dir, gallery):
    index, _ = built
    model = ExportedModel(export_dir, runtime="savedmodel")
    paths, _ = list_gallery(gallery)
    query = model.embed_files(paths[:1])
    found = index.search(query, k=len(index) + 10)  # k larger than the index is clamped
    assert found.indices.shape == (1, len(index))
    gallery_vectors = model.embed_files([found.paths[0, j] for j in range(5)])
    expected = np.linalg.norm(gallery_vectors - query, axis=1)
    np.testing.assert_allclose(found.distances[0, :5], expected, atol=1e-4)


def test_bad_queries_and_folders(built, tmp_path):
    index, folder = built
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        index.search(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros(16, np.float32), k=0)
    with pytest.raises(FileNotFoundError, match="build-index"):
        EmbeddingIndex.load(str(tmp_path))
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        list_gallery(str(tmp_path / "empty"))
    unreadable = tmp_path / "bad" / "a"
    unreadable.mkdir(parents=True)
    (unreadable / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="x.png"):
        index.search_files([str(unreadable / "x.png")])
