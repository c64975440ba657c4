import os

import numpy as np
import pytest

from dnc_keras.datasets import load
from dnc_keras.datasets.glyphs import (
    FONT_FILES,
    font_paths,
    glyph_classes,
    load_glyphs,
    render_clean,
)


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs(seed=0)


def test_shapes_dtype_range(glyphs):
    assert glyphs.name == "glyphs"
    for x, y, names in (
        (glyphs.x_train, glyphs.y_train, glyphs.class_names_train),
        (glyphs.x_test, glyphs.y_test, glyphs.class_names_test),
    ):
        assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 1)
        assert y.dtype == np.int32 and y.shape == (len(x),)
        assert 0.0 <= x.min() and x.max() <= 1.0
        # White glyph on black: the border is background.
        assert x[:, 0, :, :].mean() < 0.01
        np.testing.assert_array_equal(np.unique(y), np.arange(len(names)))
        # Every class: 16 fonts x 2 copies.
        np.testing.assert_array_equal(np.bincount(y), np.full(len(names), 32))


def test_same_seed_same_arrays_other_seed_other_split(glyphs):
    again = load_glyphs(seed=0, cache=False)  # drawn again, not read back
    np.testing.assert_array_equal(glyphs.x_train, again.x_train)
    np.testing.assert_array_equal(glyphs.y_test, again.y_test)
    assert glyphs.class_names_train == again.class_names_train
    other = load("glyphs", seed=1, images_per_font=1)
    assert set(other.class_names_train) != set(glyphs.class_names_train)


def test_splits_disjoint_halves(glyphs):
    classes, _ = glyph_classes()
    train, test = set(glyphs.class_names_train), set(glyphs.class_names_test)
    assert not train & test
    assert train | test == set(classes)
    assert len(train) == (len(classes) + 1) // 2


def test_all_sixteen_fonts_used(glyphs):
    assert glyphs.info["fonts"] == tuple(FONT_FILES) and len(FONT_FILES) == 16
    fonts = glyphs.info["font_ids_train"]
    assert fonts.shape == glyphs.y_train.shape
    for label in range(glyphs.num_classes_train):
        np.testing.assert_array_equal(np.bincount(fonts[glyphs.y_train == label]), np.full(16, 2))


def test_classes_cover_scripts_and_drop_homoglyphs():
    classes, dropped = glyph_classes()
    assert 150 <= len(classes) <= 260, len(classes)
    assert set("0123456789") <= set(classes)
    assert {"Ж", "ж", "λ", "Ω", "a", "Z"} <= set(classes)
    # Latin is kept, its Greek and Cyrillic look-alikes go.
    for kept, gone in (("A", "ΑА"), ("o", "οо"), ("x", "х"), ("P", "ΡР")):
        assert kept in classes and set(gone) <= set(dropped[kept])
        assert not set(gone) & set(classes)
    # Similar but not identical glyphs stay apart.
    assert {"O", "0", "l", "I", "Θ"} <= set(classes)


def test_no_two_classes_render_alike():
    classes, _ = glyph_classes()
    r = render_clean(classes).reshape(len(classes), 16, -1).astype(np.float64)
    identical_fonts = np.zeros((len(classes), len(classes)), int)
    for f in range(16):
        a = r[:, f]
        sq = (a * a).sum(1)
        dist2 = sq[:, None] + sq[None, :] - 2 * a @ a.T
        identical_fonts += dist2 < 1e-3
    np.fill_diagonal(identical_fonts, 0)
    i, j = np.unravel_index(identical_fonts.argmax(), identical_fonts.shape)
    # Some pairs do coincide in a few fonts (e.g. l and I in DejaVu Sans), never in most.
    assert identical_fonts.max() < 8, (classes[i], classes[j], identical_fonts.max())


def test_all_classes_train_and_jitter_does_not_depend_on_split(glyphs):
    full = load_glyphs(seed=0, train_classes="all")
    assert full.x_test.shape == (0, 32, 32, 1) and full.y_test.shape == (0,)
    assert full.class_names_test == ()
    both = set(glyphs.class_names_train) | set(glyphs.class_names_test)
    assert set(full.class_names_train) == both
    char = glyphs.class_names_test[3]
    np.testing.assert_array_equal(
        full.x_train[full.y_train == full.class_names_train.index(char)],
        glyphs.x_test[glyphs.y_test == 3],
    )


def test_options_shape_invert_no_jitter():
    plain = load_glyphs(image_size=(24, 20), images_per_font=1, rotation=0, shift=0, scale=0)
    assert plain.x_train.shape[1:] == (24, 20, 1)
    inverted = load_glyphs(image_size=(24, 20), images_per_font=1, rotation=0, shift=0, scale=0,
                           invert=True)
    np.testing.assert_allclose(inverted.x_train, 1.0 - plain.x_train, atol=1e-6)
    # Without jitter the images are the clean renderings.
    char = plain.class_names_train[0]
    np.testing.assert_allclose(
        plain.x_train[plain.y_train == 0][..., 0], render_clean([char], (24, 20))[0], atol=1e-6
    )


def test_missing_font_is_named(tmp_path):
    for name, path in font_paths().items():
        if name != "STIX General Bold Italic":
            (tmp_path / path.name).symlink_to(path)
    missing = r"STIX General Bold Italic \(STIXGeneralBolIta.ttf\)"
    with pytest.raises(FileNotFoundError, match=missing):
        load_glyphs(font_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_classes": "half"}, "train_classes must be one of"),
        ({"image_size": 0}, "image_size must be a positive int"),
        ({"images_per_font": 0}, "images_per_font must be an int >= 1"),
        ({"rotation": -1.0}, "rotation must be in"),
        ({"scale": 1.0}, "scale must be in"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_glyphs(**kwargs)


def test_a_later_load_reads_the_drawings_an_earlier_one_cached(tmp_path, monkeypatch):
    """The cache returns what drawing returns, array for array and info for info; another
    argument or a changed font file is drawn anew."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    kwargs = dict(image_size=(20, 24), images_per_font=1, seed=2)
    drawn = load_glyphs(**kwargs, cache=False)
    assert not list(tmp_path.rglob("*.npz"))  # cache=False stores nothing
    first, read = load_glyphs(**kwargs), load_glyphs(**kwargs, invert=True)
    assert not first.info["from_cache"] and read.info["from_cache"]  # invert: not drawn
    for name in ("x_train", "y_train", "x_test", "y_test", "test_sources"):
        np.testing.assert_array_equal(getattr(read, name),
                                      1.0 - getattr(drawn, name) if name.startswith("x_")
                                      else getattr(drawn, name), err_msg=name)
    assert read.class_names_test == drawn.class_names_test
    assert read.info["dropped"] == drawn.info["dropped"]
    np.testing.assert_array_equal(read.info["font_ids_test"], drawn.info["font_ids_test"])
    assert not load_glyphs(**{**kwargs, "seed": 3}).info["from_cache"]
    assert load_glyphs(**{**kwargs, "seed": np.int64(2)}).info["from_cache"]  # a config's int
    files = set(tmp_path.rglob("*.npz"))
    assert not load_glyphs(**{**kwargs, "seed": None}).info["from_cache"]  # fresh entropy
    assert set(tmp_path.rglob("*.npz")) == files
    # A font file that changed (a matplotlib upgrade) is drawn again.
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for path in font_paths().values():
        (fonts / path.name).write_bytes(path.read_bytes())
    assert not load_glyphs(**kwargs, font_dir=fonts).info["from_cache"]
    assert load_glyphs(**kwargs, font_dir=fonts).info["from_cache"]
    os.utime(fonts / FONT_FILES["STIX General"], ns=(0, 0))
    assert not load_glyphs(**kwargs, font_dir=fonts).info["from_cache"]
