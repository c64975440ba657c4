"""The preprocessing record and its one implementation, against independent references:
a numpy transcription of Pillow's resampling (Resample.c's precompute_coeffs), Pillow's own
float resize, hand-computed crop and pad geometry, and Pillow's decoding of real encodings."""

import math
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dnc_keras import preprocessing as pp
from dnc_keras.preprocessing import Preprocessing

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "serving"))
import image_corpus  # noqa: E402
import image_input  # noqa: E402

PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}


def oracle_filter(name, x):
    if name == "bilinear":
        x = abs(x)
        return 1.0 - x if x < 1.0 else 0.0
    if name == "bicubic":
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    def sinc(t):
        return 1.0 if t == 0.0 else math.sin(math.pi * t) / (math.pi * t)

    return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


def oracle_matrix(in_size, out_size, name):
    """Pillow's precompute_coeffs in float64, window bounds and all, as a dense matrix."""
    support_at_1 = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}[name]
    if in_size == out_size:
        return np.eye(out_size)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support_at_1 * filterscale
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        weights = [oracle_filter(name, (x + lo - centre + 0.5) / filterscale)
                   for x in range(hi - lo)]
        total = sum(weights)
        matrix[i, lo:hi] = [w / total for w in weights]
    return matrix


@pytest.mark.parametrize("kernel", sorted(PIL_FILTERS))
@pytest.mark.parametrize("in_size,out_size", [(105, 28), (37, 28), (5, 28), (256, 224),
                                              (1000, 31), (33, 32), (28, 28), (3, 1)])
def test_resize_weights_match_a_numpy_oracle_of_pillows_kernel(kernel, in_size, out_size):
    got = pp.resize_matrix(in_size, out_size, kernel).numpy()
    np.testing.assert_allclose(got, oracle_matrix(in_size, out_size, kernel), atol=2e-6)


@pytest.mark.parametrize("kernel", sorted(PIL_FILTERS))
def test_stretch_equals_pillows_float_resize(kernel):
    rng = np.random.default_rng(0)
    for h, w, size in [(105, 105, (28, 28)), (41, 97, (32, 20)), (7, 5, (16, 16))]:
        image = rng.integers(0, 256, (h, w), np.uint8)
        record = Preprocessing(size=size, channels=1, kernel=kernel)
        got = pp.transform(image[None, :, :, None], record).numpy()[0, :, :, 0]
        reference = np.asarray(Image.fromarray(image.astype(np.float32), "F").resize(
            (size[1], size[0]), PIL_FILTERS[kernel]))
        np.testing.assert_allclose(got, np.clip(reference, 0, 255) / 255, atol=3e-5)


def assert_pillow_8bit(got, reference):
    """Exactly Pillow's 8-bit resize (`got` in [0, 1], `reference` in grey levels)."""
    np.testing.assert_allclose(got * 255.0, reference, atol=1e-3)


def pillow_two_pass(image, size, kernel):
    """Pillow's 8-bit resize of `image` (a PIL image) to (width, height) `size`, width pass
    first then height: Pillow's order up to 12. Pillow 13 sometimes takes the height pass
    first, which rounds a few samples the other way; the record keeps the classic order."""
    first = image.resize((size[0], image.height), kernel)
    return first.resize(size, kernel)


@pytest.mark.parametrize("kernel", sorted(PIL_FILTERS))
def test_stretch_equals_pillows_8bit_resize(kernel):
    # Overshoot clipped between the passes, not only at the end: the float resize above
    # differs from this one by up to 30 grey levels on Omniglot's black-and-white strokes.
    # Equal to the bit, ties included: Pillow's coefficients, summed exactly in float64.
    rng = np.random.default_rng(4)
    strokes = np.where(rng.random((105, 105)) < 0.2, 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (41, 97), np.uint8)
    photo = rng.integers(0, 256, (3024, 4032), np.uint8)  # a 12 MP phone photo's size
    for image, size in [(strokes, (28, 28)), (noise, (32, 20)), (noise[:7, :5], (16, 16)),
                        (photo, (224, 224))]:
        record = Preprocessing(size=size, channels=1, kernel=kernel, rounding="uint8")
        got = pp.transform(image[None, :, :, None], record).numpy()[0, :, :, 0]
        reference = np.asarray(pillow_two_pass(Image.fromarray(image, "L"),
                                               (size[1], size[0]), PIL_FILTERS[kernel]))
        assert_pillow_8bit(got, reference.astype(np.float32))


def test_8bit_crop_is_torchvision_resize_then_centre_crop_on_a_pillow_image():
    image = np.random.default_rng(5).integers(0, 256, (300, 451, 3), np.uint8)
    record = Preprocessing(size=224, channels=3, fit="crop", resize_to=256, kernel="bilinear",
                           rounding="uint8")
    got = pp.transform(image[None], record).numpy()[0]
    full = np.asarray(pillow_two_pass(Image.fromarray(image), (384, 256), Image.BILINEAR))
    assert_pillow_8bit(got, full[16:240, 80:304].astype(np.float32))


def test_records_without_rounding_keep_the_float_passes_they_were_trained_with():
    old = Preprocessing(size=28, channels=1).to_dict()
    del old["rounding"]
    assert Preprocessing.from_dict(old).rounding == "float"
    record = Preprocessing(size=28, rounding="uint8")
    assert Preprocessing.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="rounding must be one of"):
        Preprocessing(size=28, rounding="int")


def test_omniglot_serves_what_pillow_fed_the_models_trained_before_the_record():
    # The loader of those models: Pillow's 8-bit Lanczos of the 105x105 drawing, inverted.
    from dnc_keras.datasets import omniglot

    drawing = np.where(np.random.default_rng(6).random((105, 105)) < 0.1, 0, 255)
    drawing = drawing.astype(np.uint8)
    pillow = np.asarray(Image.fromarray(drawing, "L").resize((28, 28), Image.LANCZOS))
    got = pp.transform(drawing[None, :, :, None], omniglot.preprocessing()).numpy()[0, ..., 0]
    np.testing.assert_allclose(got, 1.0 - pillow / 255.0, atol=1e-6)


def test_equal_size_is_the_identity_exactly():
    image = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 1), np.uint8)
    got = pp.transform(image, Preprocessing(size=32, channels=1)).numpy()
    assert np.array_equal(got, image.astype(np.float32) / 255.0)


def test_crop_is_torchvision_resize_then_centre_crop():
    # A 300x451 image, shorter side to 256: 256 x int(256 * 451 / 300) = 256 x 384, then the
    # centre 224 x 224 starts at round(32 / 2) = 16 and round(160 / 2) = 80.
    image = np.random.default_rng(2).integers(0, 256, (300, 451), np.uint8)
    record = Preprocessing(size=224, channels=1, fit="crop", resize_to=256, kernel="bilinear")
    got = pp.transform(image[None, :, :, None], record).numpy()[0, :, :, 0]
    full = oracle_matrix(300, 256, "bilinear") @ image @ oracle_matrix(451, 384, "bilinear").T
    np.testing.assert_allclose(got, np.clip(full[16:240, 80:304], 0, 255) / 255, atol=3e-5)


def test_pad_fits_inside_and_pads_black_around_the_centre():
    # 20 x 50 into 30 x 30: width 30, height round(20 * 30 / 50) = 12, rows 9..20.
    image = np.full((20, 50), 200, np.uint8)
    record = Preprocessing(size=30, channels=1, fit="pad")
    got = pp.transform(image[None, :, :, None], record).numpy()[0, :, :, 0]
    assert np.allclose(got[9:21], 200 / 255, atol=1e-5)
    assert np.all(got[:9] == 0) and np.all(got[21:] == 0)


def test_invert_and_clipping():
    image = np.random.default_rng(3).integers(0, 256, (1, 50, 50, 1), np.uint8)
    plain = pp.transform(image, Preprocessing(size=17, channels=1)).numpy()
    inverted = pp.transform(image, Preprocessing(size=17, channels=1, invert=True)).numpy()
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-7)
    assert plain.min() >= 0.0 and plain.max() <= 1.0  # lanczos overshoots; clipped


@pytest.mark.parametrize("channels", [1, 3])
def test_graph_decoder_equals_the_pillow_decoder_on_every_encoding(channels):
    record = Preprocessing(size=28, channels=channels, background=180)
    for name, data in image_corpus.corpus().items():
        graph = pp.decode(tf.constant(data), record).numpy()
        pillow = image_input.decode_image(data, channels, background=180)
        assert graph.shape == pillow.shape, name
        assert np.array_equal(graph, pillow), name


def test_exif_orientation_is_read_as_pillow_reads_it():
    files = image_corpus.corpus()
    for orientation in range(2, 9):
        data = files[f"exif{orientation}.jpg"]
        assert int(pp.exif_orientation(tf.constant(data))) == orientation
    assert int(pp.exif_orientation(tf.constant(files["exif6.png"]))) == 6
    assert int(pp.exif_orientation(tf.constant(files["baseline.jpg"]))) == 1


def test_upright_decoding_turns_the_stored_pixels():
    rng = np.random.default_rng(4)
    pixels = image_corpus.photo(rng, 30, 50)
    data = image_corpus.with_orientation(Image.fromarray(pixels), "PNG", 6)
    decoded = pp.decode(tf.constant(data), Preprocessing(size=8)).numpy()
    # Orientation 6: the stored image is turned 90 degrees clockwise to be upright.
    assert np.array_equal(decoded, np.rot90(pixels, k=-1))


def test_sixteen_bit_samples_keep_their_high_byte():
    values = np.array([[0, 255, 256, 65535, 32768, 1000]], np.uint16)
    data = image_corpus.png16(values)
    decoded = pp.decode(tf.constant(data), Preprocessing(size=8, channels=1)).numpy()[..., 0]
    assert decoded.tolist() == [[0, 0, 1, 255, 128, 3]]


def test_load_files_decodes_and_transforms_in_order(tmp_path):
    files = image_corpus.corpus()
    paths = []
    for name in ("baseline.jpg", "rgba.png", "grey16.png"):
        path = tmp_path / name
        path.write_bytes(files[name])
        paths.append(path)
    record = Preprocessing(size=(20, 24), channels=3)
    got = pp.load_files(paths, record)
    assert got.shape == (3, 20, 24, 3)
    for row, name in zip(got, ("baseline.jpg", "rgba.png", "grey16.png")):
        pixels = image_input.decode_image(files[name], 3)
        expected = pp.transform(pixels[None], record).numpy()[0]
        np.testing.assert_allclose(row, expected, atol=1e-6)


def test_load_files_names_an_unreadable_file(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(image_corpus.corpus()["rgb.png"])
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="bad.png"):
        pp.load_files([good, bad], Preprocessing(size=8))


def test_record_round_trips_and_rejects_bad_values():
    record = Preprocessing(size=(224, 224), fit="crop", resize_to=256, kernel="bilinear")
    assert Preprocessing.from_dict(record.to_dict()) == record
    assert Preprocessing(size=28).size == (28, 28)
    for bad, message in [(dict(size=0), "size"), (dict(size=28, channels=2), "channels"),
                         (dict(size=28, fit="zoom"), "fit"), (dict(size=28, kernel="box"),
                                                              "kernel"),
                         (dict(size=28, resize_to=32), "fit='crop'"),
                         (dict(size=224, fit="crop", resize_to=100), "resize_to"),
                         (dict(size=28, background=300), "background")]:
        with pytest.raises(ValueError, match=message):
            Preprocessing(**bad)
    with pytest.raises(ValueError, match="unknown key"):
        Preprocessing.from_dict({"size": [28, 28], "colour": "red"})
