import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dnc_keras import images
from dnc_keras.batches import FileSource
from dnc_keras.datasets import ImageSplit
from dnc_keras.sampling import ClusterBatchSampler


def _save(path, array, fmt=None):
    Image.fromarray(array).save(path, fmt)
    return str(path)


def test_preprocessing_defaults_and_errors():
    pre = images.benchmark_preprocessing()
    assert (pre.size, pre.crop_side, pre.shape, pre.fit, pre.kernel) == (
        (224, 224), 256, (224, 224, 3), "crop", "bilinear")
    assert images.benchmark_preprocessing(image_size=32).crop_side == 37
    with pytest.raises(ValueError, match="Need 1 <= image_size <= resize_size"):
        images.benchmark_preprocessing(image_size=64, resize_size=32)
    with pytest.raises(ValueError, match="channels must be one of"):
        images.benchmark_preprocessing(channels=2)
    with pytest.raises(ValueError, match="scale must satisfy"):
        images.RandomResizedCrop(scale=(0.5, 0.1))


def _torchvision_eval(array, resize, crop):
    """Resize(resize) then CenterCrop(crop) as torchvision does them on a PIL image."""
    image = Image.fromarray(array)
    w, h = image.size
    ow, oh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize((ow, oh), Image.Resampling.BILINEAR)
    left, top = int(round((ow - crop) / 2.0)), int(round((oh - crop) / 2.0))
    return np.asarray(image.crop((left, top, left + crop, top + crop)), np.float32) / 255.0


@pytest.mark.parametrize("height,width", [(80, 160), (150, 60), (64, 64)])
def test_eval_matches_torchvision_resize_and_centre_crop(tmp_path, height, width):
    yy, xx = np.mgrid[:height, :width]
    array = np.stack([(xx // 6 % 2) * 255, (yy // 6 % 2) * 255, (xx + yy) % 256], -1)
    array = array.astype(np.uint8)
    path = _save(tmp_path / "pattern.png", array)
    pre = images.benchmark_preprocessing(image_size=32, resize_size=40)
    out = images.ImageFiles([path], pre)[0]
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    reference = _torchvision_eval(array, 40, 32)
    # Pillow rounds to uint8 after each of its two passes; ours stays float: 1/255 apart.
    assert np.abs(out - reference).max() <= 1.01 / 255
    shifted = _torchvision_eval(array[2:], 40, 32)  # a crop off by a few pixels is caught
    assert np.abs(out - shifted).mean() > 2 * np.abs(out - reference).mean()


@pytest.mark.parametrize("height,width", [(300, 200), (50, 400), (10, 10), (7, 500)])
def test_crop_window_follows_torchvision(height, width):
    scale, ratio = images.TRAIN_SCALE, images.TRAIN_RATIO
    fallback_allowed = width / height > ratio[1] or width / height < ratio[0]
    for i in range(200):
        y, x, h, w = (int(v) for v in images._crop_window(
            tf.constant(height), tf.constant(width), scale, ratio, tf.constant([3, i])))
        assert 0 <= y <= height - h and 0 <= x <= width - w and h >= 1 and w >= 1
        area, aspect = h * w / (height * width), w / h
        in_range = (scale[0] * 0.8 <= area <= 1.0 and ratio[0] * 0.8 <= aspect <= ratio[1] * 1.25)
        # A window outside the ranges can only be the fallback, the centred maximal crop.
        assert in_range or (fallback_allowed and y == (height - h) // 2 and x == (width - w) // 2)


def test_train_crop_is_deterministic_per_seed_and_flips(tmp_path):
    array = np.zeros((60, 90, 3), np.uint8)
    array[:, :45] = 255  # left half white
    contents = tf.io.read_file(_save(tmp_path / "half.png", array))
    pre = images.benchmark_preprocessing(image_size=24)
    crop = images.RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.5, 1.5))
    outs = [crop(contents, pre, tf.constant([0, i], tf.int64)).numpy() for i in range(20)]
    np.testing.assert_array_equal(outs[0], crop(contents, pre, tf.constant([0, 0],
                                                                           tf.int64)).numpy())
    left_white = [o[:, :8].mean() > o[:, -8:].mean() for o in outs]
    assert any(left_white) and not all(left_white)  # both orientations occur
    no_flip = images.RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.5, 1.5), flip=False)
    assert all(no_flip(contents, pre, tf.constant([0, i], tf.int64)).numpy()[:, :8].mean() > 0.9
               for i in range(10))


def test_jpeg_png_gray_and_grayscale_output(tmp_path):
    """Every format decodes as Pillow does and then follows torchvision's Resize + CenterCrop
    (Pillow's float resampling, so no uint8 rounding between passes)."""
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    gray = rgb[..., 0]
    paths = [_save(tmp_path / "a.jpg", rgb), _save(tmp_path / "b.png", rgb),
             _save(tmp_path / "c.jpg", gray), _save(tmp_path / "d.gif", gray),
             _save(tmp_path / "e.bmp", rgb)]
    for channels in (3, 1):
        pre = images.benchmark_preprocessing(image_size=16, channels=channels)
        x = images.ImageFiles(paths, pre)[:]
        assert x.shape == (5, 16, 16, channels)
        for i, path in enumerate(paths):
            with Image.open(path) as img:
                decoded = np.asarray(img.convert("RGB" if channels == 3 else "L"))
            decoded = decoded.reshape(*decoded.shape[:2], channels)
            expected = np.stack([_float_eval(decoded[..., c], 18, 16)
                                 for c in range(channels)], -1)
            np.testing.assert_allclose(x[i], expected, atol=1e-4)
            y = images.RandomResizedCrop()(tf.io.read_file(path), pre,
                                           tf.constant([1, i], tf.int64))
            assert y.shape == (16, 16, channels) and 0 <= float(tf.reduce_min(y))


def _float_eval(channel, resize, crop):
    """torchvision's Resize(resize) + CenterCrop(crop) with Pillow's float bilinear."""
    image = Image.fromarray(channel.astype(np.float32), "F")
    w, h = image.size
    ow, oh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize((ow, oh), Image.Resampling.BILINEAR)
    left, top = int(round((ow - crop) / 2.0)), int(round((oh - crop) / 2.0))
    out = np.asarray(image.crop((left, top, left + crop, top + crop)))
    return np.clip(out, 0, 255) / 255.0


def test_find_and_drop_unreadable(tmp_path):
    good = [_save(tmp_path / f"ok{i}.jpg", np.full((20, 20, 3), 40 * i, np.uint8))
            for i in range(4)]
    data = (tmp_path / "ok0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    paths = good[:2] + [str(tmp_path / "truncated.jpg")] + good[2:] + \
        [str(tmp_path / "garbage.png"), str(tmp_path / "gone.jpg")]
    failures = images.find_unreadable(paths)
    assert [(i, p.rsplit("/", 1)[1]) for i, p, _ in failures] == [
        (2, "truncated.jpg"), (5, "garbage.png"), (6, "gone.jpg")]
    assert all("function_node" not in reason and reason for _, _, reason in failures)
    assert "No such file" in failures[2][2]
    split = ImageSplit(paths, [0, 0, 1, 1, 1, 2, 2], ("a", "b", "c"))
    with pytest.warns(UserWarning, match=r"Skipping 3 unreadable image\(s\) of the train split: "
                                         r".*truncated\.jpg"):
        kept, dropped = images.drop_unreadable(split, "train")
    assert len(kept) == 4 and kept.class_names == ("a", "b") and len(dropped) == 3
    assert images.find_unreadable(good, contents=images.read_all(good)) == []


def test_image_files_behaves_like_an_array(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", np.full((12, 16, 3), 20 * i, np.uint8))
             for i in range(11)]
    files = images.ImageFiles(paths, images.benchmark_preprocessing(image_size=8), batch_size=3)
    assert len(files) == 11 and files.shape == (11, 8, 8, 3)
    full = np.asarray(files)
    np.testing.assert_allclose(full[:, 0, 0, 0], [20 * i / 255 for i in range(11)], atol=1e-6)
    chunks = [files[i:i + 4] for i in range(0, 11, 4)]  # consecutive slices, as embed reads
    np.testing.assert_array_equal(np.concatenate(chunks), full)
    np.testing.assert_array_equal(files[5], full[5])
    np.testing.assert_array_equal(files[[9, 1]], full[[9, 1]])
    np.testing.assert_array_equal(files[-1], full[10])
    np.testing.assert_array_equal(files[2:9:3], full[2:9:3])
    assert files[4:4].shape == (0, 8, 8, 3)
    cached = images.ImageFiles(paths, images.benchmark_preprocessing(image_size=8),
                               contents=images.read_all(paths))
    np.testing.assert_array_equal(cached[:], full)


def test_sampler_dataset_batches_follow_the_sampler(tmp_path):
    labels = np.repeat(np.arange(4), 3)
    paths = [_save(tmp_path / f"{i}.jpg", np.full((30, 40, 3), 60 * c, np.uint8))
             for i, c in enumerate(labels)]
    pre = images.benchmark_preprocessing(image_size=16)

    def batches(seed, contents=None):
        sampler = ClusterBatchSampler(labels, 2, 2, seed=seed, steps_per_epoch=3)
        dataset = sampler.as_dataset(FileSource(paths, pre, contents=contents))
        assert dataset.cardinality().numpy() == 3
        return [(x["images"].numpy(), x["learner"].numpy(), y.numpy())
                for epoch in range(2) for x, y in dataset]

    run = batches(seed=5)
    assert len(run) == 6
    for x, learner, y in run:
        assert x.shape == (4, 16, 16, 3) and learner.shape == (4,) and y.shape == (4,)
        # each image's grey level says its class: the labels travel with their images
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 60 * y / 255, atol=0.03)
    again = batches(seed=5, contents=images.read_all(paths))
    for (x1, _, y1), (x2, _, y2) in zip(run, again):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    other = batches(seed=6)  # another seed: other batches and other crops
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(run, other))


def test_sampler_dataset_checks_alignment(tmp_path):
    sampler = ClusterBatchSampler(np.repeat(np.arange(3), 2), 2, 2)
    with pytest.raises(ValueError, match="image source must align with the sampler's labels"):
        sampler.as_dataset(FileSource(["a.jpg"] * 5))


def test_crop_ratio_range_is_log_uniform():
    """torchvision draws log(aspect) uniformly in [log 3/4, log 4/3]. A Kolmogorov-Smirnov test
    on 2,000 windows: a linear-uniform draw (CDF 0.071 away at aspect 1) would be rejected, as
    the critical distance at p = 0.01 is 1.63 / sqrt(2000) = 0.036."""
    from scipy import stats

    window = tf.function(lambda seed: images._crop_window(
        tf.constant(1000), tf.constant(1000), (0.08, 0.2), images.TRAIN_RATIO, seed))
    logs = []
    for i in range(2000):
        _, _, h, w = window(tf.constant([7, i]))
        logs.append(math.log(int(w) / int(h)))
    low, high = math.log(images.TRAIN_RATIO[0]), math.log(images.TRAIN_RATIO[1])
    assert stats.kstest(logs, stats.uniform(low, high - low).cdf).pvalue > 0.01
    linear = np.log(np.random.default_rng(0).uniform(*images.TRAIN_RATIO, 2000))
    assert stats.kstest(linear, stats.uniform(low, high - low).cdf).pvalue < 0.01
