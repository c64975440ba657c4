"""EmbeddingIndex on synthetic embeddings: the three faiss kinds against a numpy brute-force
oracle, ids that survive additions and removals, atomic saves, files that must agree, and the
model hash that ties an index to its model."""

import math
import os

import numpy as np
import pytest

from dnc_keras.export import faiss_index
from dnc_keras.export import index as index_module
from dnc_keras.export.index import EmbeddingIndex
from json_files import edit_json

DIM = 32


def clustered(n, classes, seed, spread=0.1):
    """Unit vectors around `classes` random unit centres (fixed by seed 0), labels as str."""
    centres = np.random.default_rng(0).standard_normal((classes, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + spread * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [str(v) for v in labels]


def oracle(gallery, ids, queries, k):
    """(distances, ids) of the k nearest by brute force in float64, ties by id."""
    d = np.linalg.norm(queries[:, None, :].astype(np.float64) - gallery[None], axis=2)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.asarray(ids)[order]


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def data():
    gallery, labels = clustered(3000, 60, seed=1)
    queries, _ = clustered(200, 60, seed=2)
    return gallery, labels, queries


def test_flat_is_exact(data):
    gallery, labels, queries = data
    index = EmbeddingIndex(gallery, labels)
    found = index.search(queries, k=10, threshold=math.inf)
    distances, ids = oracle(gallery, np.arange(len(gallery)), queries, 10)
    np.testing.assert_array_equal(found.ids, ids)
    np.testing.assert_allclose(found.distances, distances, atol=1e-5)
    assert found.labels[0, 0] == labels[ids[0, 0]] and not found.unknown.any()
    assert index.parameters == {} and index.tuning is None


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_reach_the_tuned_recall(data, kind):
    gallery, labels, queries = data
    index = EmbeddingIndex(gallery, labels, kind=kind, target_recall=0.95)
    name = faiss_index.SEARCH_PARAMETER[kind]
    assert index.tuning["parameter"] == name and index.tuning["sample"] == 600
    assert index.tuning["reached"] and index.tuning["recall_at_10"] >= 0.95
    assert index.parameters[name] == index.tuning["value"]
    if kind == "ivf":
        assert index.parameters["nlist"] == min(round(4 * math.sqrt(3000)), 3000 // 50) == 60
    else:
        assert index.parameters["M"] == 32 and index.parameters["efConstruction"] == 200
    found = index.search(queries, k=10, threshold=math.inf)
    _, truth = oracle(gallery, np.arange(len(gallery)), queries, 10)
    # Held-out queries the tuning never saw: within sampling noise of the target.
    assert recall(found.ids, truth) >= 0.92
    # Distances are true distances to the ids returned.
    expected = np.linalg.norm(gallery[found.ids[:, 0]] - queries, axis=1)
    np.testing.assert_allclose(found.distances[:, 0], expected, atol=1e-5)


def test_a_given_search_parameter_is_kept_untuned(data):
    gallery, labels, _ = data
    index = EmbeddingIndex(gallery, labels, kind="ivf", parameters={"nlist": 16, "nprobe": 16})
    assert index.parameters == {"nlist": 16, "nprobe": 16} and index.tuning is None
    # nprobe = nlist searches every list: exact.
    found = index.search(gallery[:20], k=5, threshold=math.inf)
    np.testing.assert_array_equal(found.ids, oracle(gallery, np.arange(3000), gallery[:20], 5)[1])


@pytest.mark.parametrize("kind, parameters, advised", [
    ("ivf", {"nlist": 4000, "nprobe": 1024}, "IVF scans 26% of its lists per query (nprobe 1024 "
                                             "of 4000)"),
    ("ivf", {"nlist": 100, "nprobe": 5}, "IVF scans 5% of its lists"),
    ("ivf", {"nlist": 100, "nprobe": 4}, None),  # 4% of the lists: still worth it
    ("ivf", {"nlist": 4000}, None),  # nprobe not yet set
    ("hnsw", {"M": 32, "efSearch": 1024}, None)])
def test_an_ivf_index_scanning_most_lists_is_advised_against(kind, parameters, advised):
    advice = faiss_index.slow_ivf_advice(kind, parameters)
    if advised is None:
        assert advice is None
    else:
        assert advice.startswith(advised) and "--index hnsw" in advice and "\n" not in advice


def test_small_galleries_search_exhaustively():
    gallery, labels = clustered(100, 5, seed=3)
    index = EmbeddingIndex(gallery, labels, kind="ivf")
    assert index.parameters == {"nlist": 2, "nprobe": 2} and "not tuned" in index.tuning["note"]
    found = index.search(gallery[:10], k=3, threshold=math.inf)
    np.testing.assert_array_equal(found.ids, oracle(gallery, np.arange(100), gallery[:10], 3)[1])


@pytest.mark.parametrize("kind, parameters, message", [
    ("flat", {"nlist": 4}, "a flat index takes the parameters: none. Received: nlist=4"),
    ("ivf", {"nlist": 8, "nprobe": 9}, "nprobe must be at most nlist \\(8\\)"),
    ("ivf", {"nlist": 5000}, "nlist must be at most the number of vectors to train on \\(3000"),
    ("hnsw", {"M": 0}, "M must be a positive integer. Received: M=0"),
    ("hnsw", {"efsearch": 10}, "takes the parameters: M, efConstruction, efSearch"),
    ("annoy", {}, "index kind must be one of flat, ivf, hnsw. Received: 'annoy'"),
])
def test_bad_parameters_are_named(data, kind, parameters, message):
    gallery, labels, _ = data
    with pytest.raises(ValueError, match=message):
        EmbeddingIndex(gallery, labels, kind=kind, parameters=parameters)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_and_remove_keep_ids_stable(data, kind, tmp_path):
    gallery, labels, queries = data
    # Exhaustive search parameters, so the oracle's answer is the index's exact answer.
    exhaustive = {"ivf": {"nlist": 16, "nprobe": 16}, "hnsw": {"efSearch": 512}}
    index = EmbeddingIndex(gallery[:2000], labels[:2000], kind=kind,
                           parameters=exhaustive.get(kind))
    new = index.add(gallery[2000:], labels[2000:], paths=[f"p{i}" for i in range(1000)])
    np.testing.assert_array_equal(new, np.arange(2000, 3000))
    removed = np.arange(0, 3000, 7)
    assert index.remove(removed.tolist() + [7]) == len(removed)  # repeats count once
    live = np.setdiff1d(np.arange(3000), removed)
    assert len(index) == len(live) and index.ids.tolist() == live.tolist()
    assert index.add(gallery[:1], ["x"]).tolist() == [3000]  # ids are never reused
    live = np.append(live, 3000)
    vectors = np.concatenate([gallery, gallery[:1]])
    found = index.search(queries, k=10, threshold=math.inf)
    _, truth = oracle(vectors[live], live, queries, 10)
    assert not np.isin(found.ids, removed).any()
    assert recall(found.ids, truth) >= (1.0 if kind == "flat" else 0.98)
    assert index.paths[index.ids == 2500][0] == "p500" and index.labels[-1] == "x"
    if kind == "hnsw":
        assert len(index.hidden) == len(removed)
        assert index.compact() == len(removed) and len(index.hidden) == 0
        again = index.search(queries, k=10, threshold=math.inf)
        assert not np.isin(again.ids, removed).any() and recall(again.ids, truth) >= 0.98
    index.save(str(tmp_path))
    loaded = EmbeddingIndex.load(str(tmp_path))
    assert loaded.ids.tolist() == index.ids.tolist() and len(loaded.hidden) == len(index.hidden)
    np.testing.assert_array_equal(loaded.search(queries, k=10).ids, index.search(queries, k=10).ids)
    assert loaded.add(gallery[:1], ["y"]).tolist() == [3001]


def test_removing_an_unknown_id_changes_nothing(data):
    gallery, labels, _ = data
    index = EmbeddingIndex(gallery[:100], labels[:100])
    with pytest.raises(ValueError, match="ids not in the index: 100, 250"):
        index.remove([3, 100, 250])
    assert len(index) == 100
    with pytest.raises(ValueError, match="ids must be integers"):
        index.remove(["a"])
    with pytest.raises(ValueError, match="no item of the index has the path"):
        index.ids_of_paths(["nowhere.png"])


def test_ids_of_paths():
    gallery, labels = clustered(4, 2, seed=4)
    index = EmbeddingIndex(gallery, labels, paths=["a.png", "b.png", "a.png", "c.png"])
    assert index.ids_of_paths(["a.png"]).tolist() == [0, 2]
    assert index.ids_of_paths([os.path.abspath("c.png")]).tolist() == [3]


def test_model_hash_mismatch_names_both(data):
    gallery, labels, queries = data
    export = {"dir": "/nowhere", "name": "glyphs", "version": 3, "runtime": "onnx",
              "model_hash": "a" * 64}
    index = EmbeddingIndex(gallery[:50], labels[:50], export=export)
    with pytest.raises(ValueError, match=f"the model of the query embeddings is model "
                                         f"{'b' * 16}, but this index holds vectors of "
                                         f"model {'a' * 16} \\(glyphs version 3\\)"):
        index.search(queries, model_hash="b" * 64)
    with pytest.raises(ValueError, match="the model of the embeddings to add is model bbbb"):
        index.add(queries[:1], ["z"], model_hash="b" * 64)
    assert index.search(queries[:1], model_hash="a" * 64).ids.shape == (1, 5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(data, kind, tmp_path):
    gallery, labels, queries = data
    index = EmbeddingIndex(gallery, labels, kind=kind)
    index.calibration = {"threshold": 0.5}
    index.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path))[0] == "index.json"
    loaded = EmbeddingIndex.load(str(tmp_path))
    assert (loaded.kind, loaded.parameters, loaded.tuning, loaded.threshold) == \
        (kind, index.parameters, index.tuning, 0.5)
    np.testing.assert_array_equal(loaded.search(queries, k=10).ids,
                                  index.search(queries, k=10).ids)


def test_an_interrupted_save_leaves_the_previous_index(data, tmp_path, monkeypatch):
    gallery, labels, queries = data
    folder = str(tmp_path / "index")
    index = EmbeddingIndex(gallery[:500], labels[:500])
    index.save(folder)
    before = sorted(os.listdir(folder))
    index.add(gallery[500:600], labels[500:600])

    def crash(value, path):  # the new vectors file is written; index.json is not
        with open(path, "w") as f:
            f.write('{"format": "dnc_keras.ind')
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_dump_json", crash)
    with pytest.raises(KeyboardInterrupt):
        index.save(folder)
    monkeypatch.undo()
    assert len(EmbeddingIndex.load(folder)) == 500
    assert not any(".tmp-" in name for name in os.listdir(folder))
    # The next save commits and clears the orphaned vectors file.
    index.save(folder)
    assert len(EmbeddingIndex.load(folder)) == 600
    assert len(os.listdir(folder)) == len(before) == 2


def test_an_unchanged_index_rewrites_only_its_record(data, tmp_path):
    gallery, labels, _ = data
    index = EmbeddingIndex(gallery[:100], labels[:100])
    index.save(str(tmp_path))
    vectors = [n for n in os.listdir(tmp_path) if n.endswith(".faiss")]
    loaded = EmbeddingIndex.load(str(tmp_path))
    loaded.calibration = {"threshold": 0.3}
    loaded.save(str(tmp_path))
    assert [n for n in os.listdir(tmp_path) if n.endswith(".faiss")] == vectors
    assert EmbeddingIndex.load(str(tmp_path)).threshold == 0.3


def _tamper(folder, change):
    edit_json(os.path.join(folder, "index.json"), change)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["items"]["ids"].pop(), "4 ids, 5 labels and 5 paths"),
    (lambda m: [m["items"][key].pop() for key in ("ids", "labels", "paths")],
     "disagree: 5 vectors, 4 items and 0 hidden ids"),
    (lambda m: m["items"]["ids"].__setitem__(4, 9), "disagree on the ids, e.g. 4, 9"),
    (lambda m: m["items"]["ids"].__setitem__(4, 3), "unique, ascending"),
    (lambda m: m.update(dim=8), "disagree: 16-d vectors, 8-d in index.json"),
    (lambda m: m.update(next_id=2), "next_id 2 is not above the largest id 4"),
    (lambda m: m.update(vectors="../elsewhere.faiss"), "'vectors' must name a .faiss file"),
    (lambda m: m.pop("items"), "malformed \\(KeyError: 'items'\\)"),
    (lambda m: m.update(format="dnc_keras.index/1"), "rebuild it with `dnc-keras build-index`"),
])
def test_load_refuses_files_that_disagree(tmp_path, change, message):
    gallery = np.eye(5, 16, dtype=np.float32)
    EmbeddingIndex(gallery, list("abcde")).save(str(tmp_path))
    _tamper(str(tmp_path), change)
    with pytest.raises(ValueError, match=message):
        EmbeddingIndex.load(str(tmp_path))


def test_load_reports_missing_and_broken_files(tmp_path):
    EmbeddingIndex(np.eye(3, 8, dtype=np.float32), list("abc")).save(str(tmp_path))
    vectors = [n for n in os.listdir(tmp_path) if n.endswith(".faiss")][0]
    (tmp_path / vectors).write_bytes(b"not faiss")
    with pytest.raises(ValueError, match="is not a readable faiss index"):
        EmbeddingIndex.load(str(tmp_path))
    (tmp_path / vectors).unlink()
    with pytest.raises(FileNotFoundError, match=f"{vectors} not found"):
        EmbeddingIndex.load(str(tmp_path))
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        EmbeddingIndex.load(str(tmp_path))


def test_bad_thresholds_and_empty_indexes():
    index = EmbeddingIndex(np.eye(2, 8, dtype=np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="threshold must be a distance >= 0"):
        index.search(np.eye(1, 8), threshold=-1)
    index.remove([0, 1])
    with pytest.raises(ValueError, match="holds no items"):
        index.search(np.eye(1, 8))


def test_bad_target_recall(data):
    gallery, labels, _ = data
    with pytest.raises(ValueError, match="target_recall must be in \\(0, 1\\]. Received: "
                                         "target_recall=1.5"):
        EmbeddingIndex(gallery, labels, kind="hnsw", target_recall=1.5)


def _anon_huge_bytes(address, nbytes):
    """AnonHugePages of this process's mappings overlapping [address, address + nbytes), from
    /proc/self/smaps (madvise splits a mapping where its advice starts and ends)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start < address + nbytes and address < end
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="huge pages: Linux only")
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_searched_arrays_are_held_in_huge_pages_and_search_the_same(kind, tmp_path):
    import faiss

    vectors = np.random.default_rng(0).standard_normal((20_000, 128)).astype(np.float32)
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    parameters = {"M": 8, "efConstruction": 40, "efSearch": 32} if kind == "hnsw" else {}
    stored = faiss_index.build(kind, vectors, ids, parameters)
    inner = faiss.downcast_index(stored.index)
    codes = faiss.downcast_index(inner.storage).codes if kind == "hnsw" else inner.codes
    moved = faiss_index.back_with_huge_pages(stored, kind)
    if moved == 0:
        pytest.skip("this kernel moved nothing into huge pages (MADV_COLLAPSE: Linux 6.1+)")
    # 10,000 KiB of vectors: at least 3 whole 2 MiB pages inside them, and the kernel says so.
    assert moved >= 3 + (kind == "hnsw")
    huge = _anon_huge_bytes(int(codes.data()), codes.byte_size())
    assert huge >= 3 * faiss_index.HUGE_PAGE
    copy = faiss.deserialize_index(faiss.serialize_index(stored))  # ordinary pages
    queries = vectors[:50] + 0.01
    for a, b in zip(stored.search(queries, 10), copy.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    # A loaded index is moved too.
    saved = EmbeddingIndex(vectors[:2000], ["a"] * 2000, kind=kind,
                           parameters=parameters or None)
    saved.save(str(tmp_path / "index"))
    loaded = EmbeddingIndex.load(str(tmp_path / "index"))
    assert faiss_index.back_with_huge_pages(loaded._index, kind) == \
        faiss_index.back_with_huge_pages(saved._index, kind)


@pytest.mark.parametrize("errors, moved, tries", [([], True, 1), ([11, 11], True, 3),
                                                   ([11, 11, 11], False, 3), ([22], False, 1)])
def test_collapse_retries_while_the_kernel_says_try_again(monkeypatch, errors, moved, tries):
    """MADV_COLLAPSE: EAGAIN (11, no free huge page at that moment) is retried, up to
    COLLAPSE_ATTEMPTS calls; EINVAL (22, a kernel before 6.1) gives up at once."""
    import ctypes
    import types

    calls, pending = [], list(errors)

    def madvise(start, length, advice):
        calls.append((start, length, advice))
        if advice == faiss_index.MADV_COLLAPSE and pending:
            ctypes.set_errno(pending.pop(0))
            return -1
        return 0

    monkeypatch.setattr(faiss_index.ctypes, "CDLL",
                        lambda *args, **kwargs: types.SimpleNamespace(madvise=madvise))
    page = faiss_index.HUGE_PAGE
    done = faiss_index._collapse(page + 100, 3 * page)  # whole huge pages: the 2nd and 3rd
    assert done == (2 * page if moved else 0)
    assert calls[0] == (2 * page, 2 * page, faiss_index.MADV_HUGEPAGE)
    assert calls[1:] == [(2 * page, 2 * page, faiss_index.MADV_COLLAPSE)] * tries
