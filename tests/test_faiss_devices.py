"""The GPU route of faiss, checked on the CPU build: with GPUs reported, exact search and
k-means ask faiss to clone their index onto all of them, and compute what the CPU does (the
fake cloner returns the CPU index, so equality checks the plumbing, not a GPU's arithmetic)."""

import faiss
import numpy as np
import pytest

from dnc_keras import clustering, evaluation, faiss_devices


@pytest.fixture
def fake_gpus(monkeypatch):
    """faiss reports 2 GPUs; index_cpu_to_all_gpus records its calls and keeps the index."""
    calls = []

    def clone(index, co=None, ngpu=-1):
        calls.append((type(index).__name__, ngpu))
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", clone)
    return calls


def _data(seed=0, n=300, dim=16, classes=10):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n // classes)
    x = centres[labels] + rng.standard_normal((len(labels), dim))
    return x.astype(np.float32), labels


def test_cpu_build_reports_no_gpu_and_keeps_the_cpu_index():
    assert faiss_devices.num_gpus() == 0
    assert type(faiss_devices.flat_l2(8)).__name__ == "IndexFlatL2"
    assert faiss_devices.kmeans_device_options() == {}


def test_search_goes_to_every_gpu_and_computes_the_same(fake_gpus):
    x, labels = _data()
    with pytest.MonkeyPatch.context() as cpu:
        cpu.setattr(faiss, "get_num_gpus", lambda: 0)
        expected = evaluation.retrieval_metrics(x, labels, nmi=False)
        neighbours = evaluation.nearest_neighbours(x, 5)
    assert fake_gpus == []
    assert evaluation.retrieval_metrics(x, labels, nmi=False) == expected
    np.testing.assert_array_equal(evaluation.nearest_neighbours(x, 5), neighbours)
    assert fake_gpus == [("IndexFlatL2", 2), ("IndexFlatL2", 2)]


def test_searches_deeper_than_a_gpu_allows_stay_on_the_cpu(fake_gpus):
    assert type(faiss_devices.flat_l2(8, max_k=faiss_devices.GPU_MAX_K + 1)).__name__ == \
        "IndexFlatL2"
    assert fake_gpus == []
    faiss_devices.flat_l2(8, max_k=faiss_devices.GPU_MAX_K)
    assert fake_gpus == [("IndexFlatL2", 2)]


def test_kmeans_trains_on_every_gpu_and_auto_picks_faiss(fake_gpus):
    x, _ = _data(1)
    with pytest.MonkeyPatch.context() as cpu:
        cpu.setattr(faiss, "get_num_gpus", lambda: 0)
        expected = clustering.kmeans(x, 4, seed=3, backend="faiss")
        # Without a GPU, "auto" takes scikit-learn at this size (K = 4, d = 16).
        assert clustering._choose_backend(16, 4, len(x)) == "sklearn"
    got = clustering.kmeans(x, 4, seed=3, backend="auto")
    np.testing.assert_array_equal(got, expected)
    assert fake_gpus == [("IndexFlatL2", 2)]
