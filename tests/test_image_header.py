"""Images are refused from their headers, before decoding: the graph's header reader
(dnc_keras/image_header.py) against Pillow's reading of the same files and against the
plain-Python twin in serving/image_input.py, on every encoding the corpus holds, on GIFs whose
frames outgrow their screen, and on decompression bombs, which no reader decodes."""

import io
import os
import struct
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dnc_keras import image_header
from dnc_keras import preprocessing as pp
from dnc_keras.preprocessing import Preprocessing

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "serving"))
import image_corpus  # noqa: E402
import image_input  # noqa: E402

RECORD = Preprocessing(size=8, channels=3)


def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(height, width):
    """A grey PNG of zeros declaring height x width: 140 KB for 12000 x 12000."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" * (width + 1)) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                               0, 0, 0))
            + chunk(b"IDAT", data + compressor.flush()) + chunk(b"IEND", b""))


def gif(frames, **options):
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=len(frames) > 1, append_images=frames[1:], **options)
    return buffer.getvalue()


def graph_size(data):
    return image_header.declared_size(tf.constant(data)).numpy().tolist()


def graph_error(data, max_side=4096, max_pixels=16_000_000):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        pp.header_function(max_side, max_pixels)(tf.constant(data))
    return pp.error_reason(error.value)


def test_declared_size_is_what_pillow_and_the_twin_read_on_every_encoding():
    for name, data in image_corpus.corpus().items():
        width, height = Image.open(io.BytesIO(data)).size
        expected = [height, width, height * width]
        assert graph_size(data) == expected, name
        assert list(image_input.declared_size(data, name)) == expected, name


def test_a_gif_declares_every_frame_it_will_decode():
    frames = [Image.fromarray(np.full((40, 50), 30 * i, np.uint8)) for i in range(5)]
    data = gif(frames, comment=b"x" * 600)  # an extension to walk over too
    assert Image.open(io.BytesIO(data)).n_frames == 5
    assert graph_size(data) == [40, 50, 5 * 40 * 50]
    assert list(image_input.declared_size(data)) == [40, 50, 5 * 40 * 50]
    # A frame larger than the screen it declares: TensorFlow decodes the frame's size.
    small_screen = bytearray(gif([Image.new("L", (300, 200))]))
    small_screen[6:10] = struct.pack("<HH", 10, 10)
    decoded = tf.io.decode_image(bytes(small_screen), channels=3, expand_animations=False)
    assert graph_size(bytes(small_screen))[:2] == list(decoded.shape[:2]) == [200, 300]
    assert list(image_input.declared_size(bytes(small_screen)))[:2] == [200, 300]


def test_bmp_sizes_top_down_and_bottom_up():
    image = Image.fromarray(np.zeros((7, 9, 3), np.uint8))
    data = bytearray(image_corpus.encode(image, "BMP"))
    assert graph_size(bytes(data)) == [7, 9, 63]
    data[22:26] = struct.pack("<i", -7)  # top-down rows
    assert graph_size(bytes(data)) == [7, 9, 63]
    assert list(image_input.declared_size(bytes(data))) == [7, 9, 63]


def test_other_formats_and_short_headers_are_refused_alike():
    webp = image_corpus.encode(Image.new("RGB", (5, 5)), "WEBP")
    png = image_corpus.corpus()["rgb.png"]
    cases = {"webp": (webp, "not a PNG, JPEG, GIF or BMP file; its first bytes are "
                            "[" + " ".join(str(b) for b in webp[:8]) + "]"),
             "text": (b"id,label\n", "not a PNG, JPEG, GIF or BMP file; its first bytes are "
                                     "[105 100 44 108 97 98 101 108]"),
             "empty": (b"", "not a PNG, JPEG, GIF or BMP file; its first bytes are []"),
             "png header cut": (png[:20], "truncated image file: shorter than its header; "
                                          "its length in bytes is [20]")}
    for name, (data, message) in cases.items():
        assert graph_error(data) == message, name
        with pytest.raises(image_input.InputError) as error:
            image_input.declared_size(data, "x.png")
        assert str(error.value) == f"x.png: {message}", name


def test_a_bomb_is_refused_by_its_declared_size_with_one_message():
    bomb = bomb_png(12000, 12000)
    assert len(bomb) < 150_000
    message = ("refused before decoding: an image must have sides in [1, 4096] and at most "
               "16000000 pixels; its header declares height, width, pixels "
               "[12000 12000 144000000]")
    assert graph_error(bomb) == message
    with pytest.raises(image_input.InputError) as error:
        image_input.check_declared(bomb, "bomb.png", 4096, 16_000_000)
    assert str(error.value) == f"bomb.png: {message}"
    # Within the side bound but over the pixel bound: refused too.
    assert graph_error(bomb_png(4000, 4001)).endswith("[4000 4001 16004000]")


def test_no_reader_decodes_a_bomb(tmp_path, monkeypatch):
    """The eager decoder never reaches its decoding step, Pillow never opens the file, and the
    traced decoders (loaders, `embed` of a run) stay far below the 432 MB its pixels take."""
    bomb = bomb_png(12000, 12000)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a bomb")

    with monkeypatch.context() as patch:
        patch.setattr(pp, "_rgb", must_not_decode)
        with pytest.raises(tf.errors.InvalidArgumentError, match="refused before decoding"):
            pp.decode(tf.constant(bomb), RECORD)
    with monkeypatch.context() as patch:
        patch.setattr(image_input.Image, "open", must_not_decode)
        with pytest.raises(image_input.InputError, match="refused before decoding"):
            image_input.read_image(str(path), 3)
    with pytest.raises(ValueError, match="refused before decoding"):
        pp.read_file(path, RECORD)  # traces the function; measured the second time
    before = _rss_mib()
    _reset_peak()
    with pytest.raises(ValueError, match=r"bomb.png: refused before decoding.*12000 12000"):
        pp.read_file(path, RECORD)
    with pytest.raises(ValueError, match=r"bomb.png: refused before decoding"):
        pp.load_files([path], RECORD)
    assert _peak_mib() - before < 100


def test_loaders_name_a_bomb_or_skip_and_count_it(tmp_path):
    from dnc_keras.datasets import load_folder
    from dnc_keras.images import find_unreadable

    for c in range(2):
        (tmp_path / f"class{c}").mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 5), 40 * i + c, np.uint8)).save(
                tmp_path / f"class{c}" / f"{i}.png")
    (tmp_path / "class0" / "bomb.png").write_bytes(bomb_png(12000, 12000))
    with pytest.raises(ValueError, match=r"bomb.png.*refused before decoding.*12000 12000"):
        load_folder(tmp_path, image_size=4)
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        data = load_folder(tmp_path, image_size=4, on_error="skip")
    assert len(data.info["skipped_files"]) == 1
    assert "bomb.png" in data.info["skipped_files"][0]
    paths = sorted(str(p) for p in tmp_path.glob("*/*.png"))
    [(index, path, reason)] = find_unreadable(paths)
    assert path.endswith("bomb.png") and "refused before decoding" in reason


def _rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
