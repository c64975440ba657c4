"""The pictures a run writes, checked against brute-force oracles: the neighbours each grid
shows, the per-class recall, the projector's tensors and the cluster scalars."""

import numpy as np
import pytest
import tensorflow as tf
from events import scalars
from PIL import Image

from dnc_keras.evaluation import nearest_neighbours, per_class_recall
from dnc_keras.training import plots, tensorboard_logs


def _oracle_neighbours(x, k):
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _data(seed=0, classes=6, per_class=5, dim=8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.normal(size=(classes, dim))[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    images = rng.random((len(labels), 10, 10, 1)).astype(np.float32)
    return x.astype(np.float32), labels, images


def test_nearest_neighbours_match_brute_force():
    x, _, _ = _data()
    np.testing.assert_array_equal(nearest_neighbours(x, 4), _oracle_neighbours(x, 4))
    # An exact duplicate stays a neighbour; only the item itself is left out.
    dup = np.concatenate([x, x[:1]])
    assert 30 in nearest_neighbours(dup, 1)[0] and 0 in nearest_neighbours(dup, 1)[30]
    with pytest.raises(ValueError, match="k must be between 1 and 29"):
        nearest_neighbours(x, 30)


def test_per_class_recall_by_hand():
    # Class 0's two items are each other's nearest; of class 1, 0.3's nearest is 0.1 (class 0)
    # and 1.5's is 0.3 (class 1).
    x = np.array([[0.0], [0.1], [0.3], [1.5]], np.float32)
    assert per_class_recall(x, [0, 0, 1, 1]) == {0: 1.0, 1: 0.5}
    x, labels, _ = _data(1)
    hits = labels[_oracle_neighbours(x, 1)[:, 0]] == labels
    expected = {c: hits[labels == c].mean() for c in range(6)}
    assert per_class_recall(x, labels) == pytest.approx(expected)


def test_neighbour_grid_shows_the_worst_queries_and_their_true_neighbours(tmp_path):
    x, labels, images = _data(2)
    path = tmp_path / "grid.png"
    queries, shown = plots.neighbour_grid(images, labels, x, path, queries=4, k=3)
    oracle = _oracle_neighbours(x, 3)
    np.testing.assert_array_equal(shown, oracle[queries])
    hits = (labels[oracle] == labels[:, None]).sum(axis=1)
    assert sorted(hits[queries]) == sorted(hits)[:4]  # the worst queries come first
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3).astype(int)
    # A wrong neighbour is framed red (tab:red is (214, 39, 40)); a right one green.
    red = np.any(np.all(np.abs(pixels - [214, 39, 40]) < 8, axis=1))
    green = np.any(np.all(np.abs(pixels - [44, 160, 44]) < 8, axis=1))
    wrong = (labels[shown] != labels[queries][:, None]).any()
    right = (labels[shown] == labels[queries][:, None]).any()
    assert red == wrong and green == right


def test_projector_holds_the_embeddings_labels_and_thumbnails(tmp_path):
    x, labels, images = _data(3)
    folder, checkpoint = tensorboard_logs.write_projector(str(tmp_path), x, labels, images)
    reader = tf.train.load_checkpoint(checkpoint)
    np.testing.assert_array_equal(
        reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE"), x)
    assert (tmp_path / "projector" / "metadata.tsv").read_text().split() == \
        [str(v) for v in labels]
    config = (tmp_path / "projector" / "projector_config.pbtxt").read_text()
    assert 'image_path: "sprite.png"' in config and "single_image_dim: 28" in config
    with Image.open(tmp_path / "projector" / "sprite.png") as sprite:
        sheet = np.asarray(sprite)
    assert sheet.shape == (6 * 28, 6 * 28, 3)  # 30 thumbnails, 6 per row
    tile = np.asarray(Image.fromarray((images[7, ..., 0] * 255).round().astype(np.uint8))
                      .resize((28, 28), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(sheet[28:56, 28:56, 0], tile)  # item 7: row 1, column 1


def test_cluster_plot_and_scalars(tmp_path):
    actions = [{"epoch": 2, "cluster_sizes": [10, 6], "cluster_classes": [3, 2]},
               {"epoch": 4, "cluster_sizes": [7, 9], "cluster_classes": [2, 3]},
               {"epoch": 5, "action": "conquer", "cluster_sizes": [], "cluster_classes": []}]
    plots.clusters(actions, tmp_path / "clusters.png")
    assert (tmp_path / "clusters.png").stat().st_size > 0
    tensorboard_logs.write_cluster_scalars(str(tmp_path), actions)
    logged = scalars(tmp_path / "clusters")
    assert sorted(logged["clusters/images/0"]) == [(2, 10.0), (4, 7.0)]
    assert sorted(logged["clusters/classes/1"]) == [(2, 2.0), (4, 3.0)]
