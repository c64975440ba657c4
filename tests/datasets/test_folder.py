import numpy as np
import pytest
from PIL import Image

from dnc_keras.datasets import load, load_folder


def _image(path, size, color):
    Image.new("RGB", size, color).save(path)


def _replica(root):
    """Four classes in assorted formats and sizes, plus files the loader must ignore."""
    for name, color, fmt in (("cat", (255, 0, 0), "png"), ("dog", (0, 255, 0), "jpg"),
                             ("eel", (0, 0, 255), "bmp"), ("fox", (255, 255, 255), "gif")):
        folder = root / name
        folder.mkdir(parents=True)
        for i, size in enumerate(((40, 30), (20, 50), (64, 64))):
            _image(folder / f"img{i}.{fmt}", size, color)
        (folder / "notes.txt").write_text("ignored")
        (folder / ".hidden.png").write_bytes(b"ignored")
    (root / ".cache").mkdir()
    return root


def test_rgb_split_and_values(tmp_path):
    ds = load("folder", data_dir=_replica(tmp_path), image_size=16)
    assert ds.class_names_train == ("cat", "dog") and ds.class_names_test == ("eel", "fox")
    assert ds.x_train.shape == (6, 16, 16, 3) and ds.x_train.dtype == np.float32
    cat = ds.x_train[ds.y_train == 0]
    np.testing.assert_allclose(cat.mean(axis=(0, 1, 2)), [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(ds.x_test[ds.y_test == 1], 1.0, atol=0.02)


def _pattern(height, width, seed):
    """A non-square RGB image with structure everywhere: a wrong geometry cannot hide in it."""
    yy, xx = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    return np.stack([(xx * 7 + yy * 3) % 256, (yy * 11) % 256,
                     rng.integers(0, 256, (height, width))], -1).astype(np.uint8)


def _oracle(grey, fit, size):
    """Pillow's float ("F") Lanczos resize with each fit's geometry, [0, 1]: an independent
    reference of the loader's record (Pillow resamples "F" images without rounding)."""
    from PIL import ImageOps

    h, w = size
    image = Image.fromarray(grey.astype(np.float32), "F")
    lanczos = Image.Resampling.LANCZOS
    if fit == "stretch":
        out = image.resize((w, h), lanczos)
    elif fit == "pad":
        out = ImageOps.pad(image, (w, h), lanczos, color=0)
    else:  # torchvision's Resize(max(size)) of the shorter side, then CenterCrop(size)
        side = max(size)
        iw, ih = image.size
        rw, rh = (side, int(side * ih / iw)) if iw <= ih else (int(side * iw / ih), side)
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        out = image.resize((rw, rh), lanczos).crop((left, top, left + w, top + h))
    return np.clip(np.asarray(out), 0, 255) / 255.0


@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("source", [(30, 40), (50, 20), (12, 20), (7, 33)])
def test_grayscale_fit_modes_match_pillow(tmp_path, fit, source):
    for c in range(2):  # two classes of two copies of a patterned, non-square image
        (tmp_path / f"c{c}").mkdir()
        for i in range(2):
            Image.fromarray(_pattern(*source, seed=c)).save(tmp_path / f"c{c}" / f"{i}.png")
    ds = load_folder(tmp_path, image_size=(12, 20), color_mode="grayscale", fit=fit,
                     train_classes="all")
    assert ds.x_train.shape == (4, 12, 20, 1) and ds.num_classes_train == 2
    grey = np.asarray(Image.fromarray(_pattern(*source, seed=1)).convert("L"))
    np.testing.assert_allclose(ds.x_train[ds.y_train == 1][0, ..., 0],
                               _oracle(grey, fit, (12, 20)), atol=1e-4)


def test_single_image_class_raises_or_warns(tmp_path):
    _replica(tmp_path)
    _image(tmp_path / "owl.png", (8, 8), (0, 0, 0))  # a stray file at the root is ignored
    (tmp_path / "owl").mkdir()
    _image(tmp_path / "owl" / "only.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match=r"Class 'owl' .* has 1 readable image.*at least 2"):
        load_folder(tmp_path)
    with pytest.warns(UserWarning, match="Dropped 1 class"):
        ds = load_folder(tmp_path, on_error="skip")
    assert ds.class_names_train + ds.class_names_test == ("cat", "dog", "eel", "fox")


def test_corrupt_file_raises_naming_it_or_is_skipped(tmp_path):
    _replica(tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    # One line naming the file once, with advice a CLI user can follow too.
    with pytest.raises(ValueError, match=r"^Cannot read image [^ ]*broken\.jpg: [^']*\. Fix or "
                       r"remove it \(dnc-keras train --skip-unreadable, or in Python the loaders' "
                       r"on_error='skip'"):
        load_folder(tmp_path)
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        ds = load_folder(tmp_path, on_error="skip")
    assert np.bincount(ds.y_train).tolist() == [3, 3]
    assert "broken.jpg" in ds.info["skipped_files"][0]


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "missing")
    _image(tmp_path / "a.png", (8, 8), (0, 0, 0))
    with pytest.raises(FileNotFoundError, match="holds images directly"):
        load_folder(tmp_path)
    nested = tmp_path / "nested"
    (nested / "alphabet" / "character01").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds subfolders"):
        load_folder(nested)
    with pytest.raises(ValueError, match="color_mode must be one of"):
        load_folder(tmp_path, color_mode="cmyk")
