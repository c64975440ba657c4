import numpy as np
import pytest
from PIL import Image, ImageDraw

from dnc_keras.datasets import load, load_omniglot



def _drawing(path, seed):
    """A 105x105 black-on-white bilevel PNG like Omniglot's."""
    rng = np.random.default_rng(seed)
    img = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(img).line([tuple(p) for p in rng.integers(15, 90, (4, 2))], fill=0, width=6)
    img.save(path)


def _replica(root, alphabets=("Alpha", "Beta"), characters=3, drawings=3):
    for a, alphabet in enumerate(alphabets):
        for c in range(1, characters + 1):
            folder = root / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(1, drawings + 1):
                _drawing(folder / f"{a}{c:02d}_{d:02d}.png", seed=100 * a + 10 * c + d)
    (root / "README.md").write_text("not an alphabet")
    return root


def test_replica_split_shapes_inversion(tmp_path):
    ds = load_omniglot(_replica(tmp_path))
    assert ds.class_names_train == ("Alpha/character01", "Alpha/character02", "Alpha/character03")
    assert ds.class_names_test == ("Beta/character01", "Beta/character02", "Beta/character03")
    assert ds.x_train.shape == (9, 28, 28, 1) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, np.repeat(np.arange(3, dtype=np.int32), 3))
    # Inverted: background dark, strokes bright.
    assert ds.x_train[:, 0, 0, 0].max() == 0.0 and ds.x_train.max() > 0.9
    raw = load_omniglot(tmp_path, image_size=(20, 30), invert=False)
    assert raw.x_train.shape[1:] == (20, 30, 1) and raw.x_train[:, 0, 0, 0].min() == 1.0


def test_rotations_multiply_train_classes_only(tmp_path):
    _replica(tmp_path)
    plain = load_omniglot(tmp_path)
    rot = load_omniglot(tmp_path, rotations=True)
    assert rot.num_classes_train == 12 and rot.class_names_test == plain.class_names_test
    assert rot.class_names_train[:4] == tuple(
        f"Alpha/character01/rot{d:03d}" for d in (0, 90, 180, 270)
    )
    x0 = rot.x_train[rot.y_train == 0]
    np.testing.assert_array_equal(x0, plain.x_train[plain.y_train == 0])
    np.testing.assert_array_equal(rot.x_train[rot.y_train == 1], np.rot90(x0, 1, axes=(1, 2)))
    with pytest.raises(ValueError, match="square image_size"):
        load_omniglot(tmp_path, image_size=(28, 20), rotations=True)


def test_alphabet_split_and_all(tmp_path):
    _replica(tmp_path, alphabets=("A", "B", "C"), characters=1, drawings=2)
    by_class = load_omniglot(tmp_path)
    assert by_class.class_names_train == ("A/character01", "B/character01")
    by_alphabet = load_omniglot(tmp_path, split="alphabet")
    assert by_alphabet.class_names_test == ("C/character01",)
    everything = load_omniglot(tmp_path, train_classes="all")
    assert everything.num_classes_train == 3 and len(everything.y_test) == 0


def test_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    layout = r"<root>/<alphabet>/<characterNN>/\*\.png"
    with pytest.raises(FileNotFoundError, match=f"nowhere.*{layout}"):
        load_omniglot(missing)
    with pytest.raises(FileNotFoundError, match="No alphabet folder"):
        load_omniglot(tmp_path)


def test_root_one_level_too_low(tmp_path):
    _replica(tmp_path)
    with pytest.raises(ValueError, match="has no character folder.*holds PNG files directly"):
        load_omniglot(tmp_path / "Alpha")


def test_empty_class_raises_or_is_dropped(tmp_path):
    _replica(tmp_path)
    (tmp_path / "Beta" / "character04").mkdir()
    with pytest.raises(ValueError, match=r"Beta/character04.*0 readable image"):
        load_omniglot(tmp_path)
    with pytest.warns(UserWarning, match="Dropped 1 class"):
        ds = load_omniglot(tmp_path, on_error="skip")
    assert "Beta/character04" not in ds.class_names_train + ds.class_names_test
    assert len(ds.info["dropped_classes"]) == 1


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_png_raises_naming_file_or_is_skipped(tmp_path, corruption):
    _replica(tmp_path)
    bad = tmp_path / "Alpha" / "character02" / "002_02.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not a png at all" if corruption == "garbage" else data[: len(data) // 2])
    # One line naming the file once, with advice a CLI user can follow too.
    with pytest.raises(ValueError, match=r"^Cannot read image [^ ]*002_02\.png: [^']*\. Fix or "
                       r"remove it \(dnc-keras train --skip-unreadable, or in Python the loaders' "
                       r"on_error='skip'"):
        load_omniglot(tmp_path)
    with pytest.warns(UserWarning, match="Skipped 1 unreadable image file"):
        ds = load_omniglot(tmp_path, on_error="skip")
    assert len(ds.info["skipped_files"]) == 1 and "002_02.png" in ds.info["skipped_files"][0]
    np.testing.assert_array_equal(np.bincount(ds.y_train), [3, 2, 3])


def test_bad_on_error(tmp_path):
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_omniglot(_replica(tmp_path), on_error="ignore")


def test_real_small1(monkeypatch, omniglot_dir):
    monkeypatch.setenv("DNC_OMNIGLOT_DIR", str(omniglot_dir))
    ds = load("omniglot")
    assert ds.num_classes_train == 68 and ds.num_classes_test == 68
    assert ds.x_train.shape == (1360, 28, 28, 1) and ds.x_test.shape == (1360, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(68, 20))
    assert ds.class_names_train[0] == "Balinese/character01"
    assert all(n.split("/")[0] in {"Korean", "Latin", "Greek"} for n in ds.class_names_test)
    # Strokes bright on a dark background; strokes cover a small part of each drawing.
    assert 0.02 < ds.x_train.mean() < 0.2
    assert ds.info["skipped_files"] == ()
