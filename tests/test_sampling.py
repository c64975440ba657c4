import numpy as np
import pytest

from dnc_keras.sampling import ClusterBatchSampler


def _labels(classes, per_class):
    return np.repeat(np.arange(classes), per_class)


def test_batches_are_p_by_m_from_one_cluster_round_robin():
    labels = _labels(12, 6)
    sampler = ClusterBatchSampler(labels, classes_per_batch=3, samples_per_class=2, seed=1)
    assignment = labels % 3
    sampler.set_clusters(assignment, 3)
    batches = list(sampler.epoch_batches())
    assert [c for _, c in batches] == [0, 1, 2] * (len(batches) // 3)
    for indices, cluster in batches:
        assert len(indices) == 6
        assert np.all(assignment[indices] == cluster)
        classes, counts = np.unique(labels[indices], return_counts=True)
        assert len(classes) == 3 and np.all(counts == 2)


def test_epoch_length_is_fixed_whatever_the_clusters():
    labels = _labels(20, 4)
    sampler = ClusterBatchSampler(labels, 2, 4)
    assert sampler.steps == 80 // 8
    sampler.set_clusters(np.where(labels < 16, 0, 1), 2)
    assert len(list(sampler.epoch_batches())) == 10
    fixed = ClusterBatchSampler(labels, 2, 4, steps_per_epoch=3)
    assert len(list(fixed.epoch_batches())) == 3
    assert int(fixed.as_dataset(np.zeros((80, 1, 1, 1))).cardinality()) == 3


def test_small_classes_with_replacement_and_few_classes_get_more_images():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    sampler = ClusterBatchSampler(labels, classes_per_batch=4, samples_per_class=3)
    (indices, _), = list(sampler.epoch_batches())
    assert len(indices) == 12
    _, counts = np.unique(labels[indices], return_counts=True)
    assert sorted(counts) == [4, 4, 4]


def test_single_image_class_in_cluster_is_dropped_and_cluster_skipped():
    labels = _labels(6, 3)
    assignment = np.repeat([0, 1], 9)
    assignment[3] = 1  # class 1 has one image in cluster 1: dropped there
    sampler = ClusterBatchSampler(labels, 2, 2)
    sampler.set_clusters(assignment, 2)
    for indices, cluster in sampler.epoch_batches():
        assert 3 not in indices
    lonely = np.array([0, 0, 1, 2, 2, 2])[labels]  # cluster 1 holds class 2 alone
    sampler.set_clusters(lonely, 3)
    with pytest.warns(UserWarning, match="Cluster 1 has 1 usable"):
        clusters = {c for _, c in sampler.epoch_batches()}
    assert clusters == {0, 2}


def test_deterministic_for_seed_and_state_round_trip():
    labels = _labels(10, 5)
    a = ClusterBatchSampler(labels, 3, 2, seed=7)
    b = ClusterBatchSampler(labels, 3, 2, seed=7)
    first = [i.tolist() for i, _ in a.epoch_batches()]
    assert first == [i.tolist() for i, _ in b.epoch_batches()]
    state = a.get_state()
    c = ClusterBatchSampler(labels, 3, 2, seed=7)
    c.set_state(state)
    assert [i.tolist() for i, _ in a.epoch_batches()] == [i.tolist() for i, _ in c.epoch_batches()]


def test_dataset_follows_new_clusters_each_epoch():
    labels = _labels(8, 4)
    images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    sampler = ClusterBatchSampler(labels, 2, 2)
    dataset = sampler.as_dataset(images)
    for x, y in dataset:
        assert set(x["learner"].numpy()) == {0}
        np.testing.assert_array_equal(labels[x["images"].numpy().reshape(-1).astype(int)], y)
    sampler.set_clusters(labels % 2, 2)
    learners = [int(x["learner"][0]) for x, _ in dataset]
    assert learners[:2] == [0, 1]


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"single image \(labels \[2\]\)"):
        ClusterBatchSampler(np.array([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="at least 2 training classes"):
        ClusterBatchSampler(np.array([0, 0, 0]))


def test_round_robin_continues_across_epochs_so_every_cluster_gets_its_share():
    """5 clusters, 2 steps an epoch: restarting at cluster 0 each epoch would never train
    clusters 2-4; continuing, 5 epochs give every cluster exactly 2 batches."""
    labels = _labels(20, 4)
    sampler = ClusterBatchSampler(labels, 2, 2, steps_per_epoch=2)
    sampler.set_clusters(labels % 5, 5)
    counts = np.zeros(5, int)
    for _ in range(5):
        for _, cluster in sampler.epoch_batches():
            counts[cluster] += 1
    assert counts.tolist() == [2, 2, 2, 2, 2]
    state = sampler.get_state()
    assert state["turn"] == 10
    resumed = ClusterBatchSampler(labels, 2, 2, steps_per_epoch=2)
    resumed.set_state(state)
    assert [c for _, c in resumed.epoch_batches()] == [c for _, c in sampler.epoch_batches()]


def test_two_seeds_share_no_epochs_batches():
    """Seeding epoch e with seed + e made seed 1's epoch e seed 0's epoch e + 1."""
    labels = _labels(30, 4)
    runs = []
    for seed in (0, 1):
        sampler = ClusterBatchSampler(labels, 3, 2, seed=seed)
        runs.append([tuple(tuple(i) for i, _ in sampler.epoch_batches()) for _ in range(6)])
    assert not set(runs[0]) & set(runs[1])


def test_walk_draws_every_image_once_before_any_twice():
    """Two clusters of uneven classes; within a period of 2 epochs, each cluster's images come
    in rounds: none repeats before all of its cluster has been drawn."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(16), rng.integers(3, 9, 16))
    assignment = (np.arange(16) % 2)[labels]
    sampler = ClusterBatchSampler(labels, 4, 2, seed=5, order="walk")
    sampler.set_clusters(assignment, 2, epoch=0)
    drawn = {0: [], 1: []}
    for _ in range(2):
        for indices, cluster in sampler.epoch_batches():
            assert len(indices) == 8 and np.all(assignment[indices] == cluster)
            classes, counts = np.unique(labels[indices], return_counts=True)
            assert len(classes) == 4 and np.all(counts == 2)
            drawn[cluster] += indices.tolist()
    for cluster, sequence in drawn.items():
        size = int(np.sum(assignment == cluster))
        assert len(sequence) >= size  # the period is long enough to draw them all
        assert len(set(sequence[:size])) >= size - 8  # one batch may straddle two rounds
        assert set(sequence) == set(np.flatnonzero(assignment == cluster).tolist())


def test_random_order_leaves_images_undrawn_where_the_walk_does_not():
    labels = _labels(30, 8)
    counts = {}
    for order in ("random", "walk"):
        sampler = ClusterBatchSampler(labels, 5, 4, seed=2, order=order)
        seen = set()
        for indices, _ in sampler.epoch_batches():
            seen.update(indices.tolist())
        counts[order] = len(seen)
    assert counts["walk"] == 240 and counts["random"] < 200


def test_walk_resumes_from_state_into_the_same_batches():
    labels = _labels(12, 6)
    reference = ClusterBatchSampler(labels, 3, 2, seed=4, order="walk")
    reference.set_clusters(labels % 2, 2, epoch=1)
    epochs = [[b.tolist() for b, _ in reference.epoch_batches()] for _ in range(4)]
    first = ClusterBatchSampler(labels, 3, 2, seed=4, order="walk")
    first.set_clusters(labels % 2, 2, epoch=1)
    for _ in range(2):
        list(first.epoch_batches())
    resumed = ClusterBatchSampler(labels, 3, 2, seed=4, order="walk")
    resumed.set_state(first.get_state())
    assert [[b.tolist() for b, _ in resumed.epoch_batches()] for _ in range(2)] == epochs[2:]
    with pytest.raises(ValueError, match="order must be one of"):
        ClusterBatchSampler(labels, 3, 2, order="sequential")


def _papers_epoch(assignment, labels, batch, pick):
    """Independent count: K x (images of the largest or smallest cluster // batch), over the
    clusters with 2 classes of 2 images."""
    images = []
    for c in np.unique(assignment[assignment >= 0]):
        classes, counts = np.unique(labels[assignment == c], return_counts=True)
        if np.sum(counts >= 2) >= 2:
            images.append(int(counts[counts >= 2].sum()))
    return len(images) * max(1, pick(images) // batch)


@pytest.mark.parametrize("length,pick", [("largest", max), ("smallest", min)])
def test_papers_epoch_is_k_times_the_largest_or_smallest_clusters_batches(length, pick):
    labels = _labels(12, 4)  # 48 images, batches of 2 x 2
    sampler = ClusterBatchSampler(labels, 2, 2, seed=3, epoch_length=length)
    assert sampler.steps == 48 // 4  # one cluster: the fixed epoch
    # Clusters of 7, 3 and 2 classes: 28, 12 and 8 images.
    assignment = np.select([labels < 7, labels < 10], [0, 1], 2)
    sampler.set_clusters(assignment, 3)
    expected = _papers_epoch(assignment, labels, 4, pick)
    assert expected == {"largest": 3 * 7, "smallest": 3 * 2}[length]  # the hand count
    batches = list(sampler.epoch_batches())
    assert sampler.steps == len(batches) == expected
    # Round-robin: every cluster its K-th of the epoch, the smaller ones drawn again.
    assert np.bincount([c for _, c in batches]).tolist() == [expected // 3] * 3
    images = np.zeros((48, 1, 1, 1), np.float32)
    assert len(list(sampler.as_dataset(images))) == expected  # no length asserted


def test_papers_epoch_counts_only_clusters_that_form_a_batch():
    labels = _labels(6, 4)
    sampler = ClusterBatchSampler(labels, 2, 2, epoch_length="largest")
    assignment = np.where(labels < 5, 0, 1)  # cluster 1 has one class: skipped
    sampler.set_clusters(assignment, 2)
    with pytest.warns(UserWarning, match="Cluster 1 has 1 usable class"):
        batches = list(sampler.epoch_batches())
    assert sampler.steps == len(batches) == 1 * (20 // 4)


def test_epoch_length_settings_are_checked():
    labels = _labels(4, 4)
    with pytest.raises(ValueError, match="epoch_length must be one of"):
        ClusterBatchSampler(labels, 2, 2, epoch_length="papers")
    with pytest.raises(ValueError, match="steps_per_epoch=5"):
        ClusterBatchSampler(labels, 2, 2, steps_per_epoch=5, epoch_length="largest")
