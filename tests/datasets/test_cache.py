"""dnc_keras.datasets.cache: drawn once, read after; a file it cannot read is drawn again and
replaced; a folder it cannot write costs only the time."""

import numpy as np
import pytest

from dnc_keras.datasets import cache


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def counting_draw(calls):
    def draw():
        calls.append(1)
        return {"images": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
                "names": np.array(["a", "β"]), "note": np.array('{"x": 1}')}
    return draw


def assert_same(found, expected):
    assert set(found) == set(expected)
    for name in expected:
        assert found[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(found[name], expected[name])


def test_drawn_once_then_read_where_keras_keeps_datasets(keras_home):
    calls = []
    first, read_first = cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))
    second, read_second = cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))
    assert (read_first, read_second, len(calls)) == (False, True, 1)
    assert_same(second, first)
    assert [p.parent for p in keras_home.rglob("*.npz")] == [keras_home / "datasets" /
                                                              "dnc_keras"]
    # Another key is another file, drawn.
    cache.cached_arrays("toy", {"seed": 1}, counting_draw(calls))
    assert len(calls) == 2 and len(list(keras_home.rglob("*.npz"))) == 2
    # use_cache=False draws and leaves the files alone.
    assert cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls),
                               use_cache=False)[1] is False
    assert len(calls) == 3 and len(list(keras_home.rglob("*.npz"))) == 2


@pytest.mark.parametrize("damage", [b"", b"not an npz", b"PK\x03\x04truncated"])
def test_a_file_it_cannot_read_is_drawn_again_and_replaced(keras_home, damage):
    calls = []
    expected, _ = cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))
    path = cache.cached_path("toy", {"seed": 0})
    with open(path, "wb") as f:
        f.write(damage)
    found, read = cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))
    assert not read and len(calls) == 2
    assert_same(found, expected)
    assert cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))[1]  # replaced


def test_a_folder_it_cannot_write_costs_only_the_time(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("KERAS_HOME", str(blocker))  # datasets/ cannot be made under a file
    calls = []
    found, read = cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))
    assert not read and len(calls) == 1 and found["images"].shape == (2, 2, 3)
    assert not cache.cached_arrays("toy", {"seed": 0}, counting_draw(calls))[1]
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind
