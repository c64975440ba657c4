"""Realistic image files for preprocessing and parity tests: photos of mixed, non-square sizes
in the encodings users have (baseline and progressive JPEG, EXIF-rotated JPEG and PNG, RGBA,
grey + alpha, palette with and without transparency, 16-bit grey and colour, 1-bit, CMYK,
GIF, BMP). Content is smooth random structure, like a photograph, not noise."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(rng, height, width):
    """uint8 [h, w, 3]: a low-frequency random field plus a little grain."""
    coarse = rng.random((max(2, height // 16), max(2, width // 16), 3)) * 255
    img = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 6, (height, width, 3))
    return np.clip(np.asarray(img, np.float64) + grain, 0, 255).astype(np.uint8)


def encode(img, fmt, **options):
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png16(array):
    """A 16-bit PNG (grey [h, w] or RGB [h, w, 3] uint16) written by hand: Pillow cannot."""
    array = np.asarray(array, np.uint16)
    h, w = array.shape[:2]
    colour = 2 if array.ndim == 3 else 0
    rows = array.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def with_orientation(img, fmt, orientation, **options):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes(), **options)


def corpus(seed=0, sizes=((37, 53), (120, 83), (61, 200), (300, 224))):
    """{name: file bytes}: every encoding at least once, sizes mixed and non-square."""
    rng = np.random.default_rng(seed)
    files = {}
    pick = iter(sizes * 20)

    def next_photo():
        return Image.fromarray(photo(rng, *next(pick)))

    files["baseline.jpg"] = encode(next_photo(), "JPEG", quality=90)
    files["progressive_420.jpg"] = encode(next_photo(), "JPEG", quality=80, progressive=True,
                                          subsampling=2)
    files["grey.jpg"] = encode(next_photo().convert("L"), "JPEG")
    files["cmyk.jpg"] = encode(next_photo().convert("CMYK"), "JPEG")
    files["rgb.png"] = encode(next_photo(), "PNG")
    rgba = np.dstack([np.asarray(next_photo()), rng.integers(0, 256, (120, 83), np.uint8)])
    files["rgba.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    files["grey_alpha.png"] = encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG")
    palette = next_photo().convert("P", palette=Image.ADAPTIVE, colors=32)
    files["palette.png"] = encode(palette, "PNG")
    files["palette_transparent.png"] = encode(palette, "PNG", transparency=5)
    files["grey16.png"] = png16(rng.integers(0, 65536, (61, 200)))
    files["rgb16.png"] = png16(rng.integers(0, 65536, (300, 224, 3)))
    files["bilevel.png"] = encode(next_photo().convert("1"), "PNG")
    files["photo.gif"] = encode(next_photo(), "GIF")
    files["photo.bmp"] = encode(next_photo(), "BMP")
    for orientation in range(2, 9):
        files[f"exif{orientation}.jpg"] = with_orientation(next_photo(), "JPEG", orientation)
    files["exif6.png"] = with_orientation(next_photo(), "PNG", 6)
    return files


def write_photo_folder(root, classes=8, per_class=6, seed=0):
    """root/<class>/<file>: each class one scene, each file a crop of it in another encoding
    (JPEG, PNG, RGBA PNG, palette PNG, 16-bit PNG, EXIF-rotated JPEG); returns the paths."""
    from pathlib import Path

    root = Path(root)
    encoders = [
        ("jpg", lambda im: encode(im, "JPEG", quality=90)),
        ("png", lambda im: encode(im, "PNG")),
        ("png", lambda im: encode(
            Image.fromarray(np.dstack([np.asarray(im), np.full(im.size[::-1], 230, np.uint8)]),
                            "RGBA"), "PNG")),
        ("png", lambda im: encode(im.convert("P", palette=Image.ADAPTIVE,
                                                          colors=64), "PNG")),
        ("png", lambda im: png16(np.asarray(im).astype(np.uint16) * 257)),
        ("jpg", lambda im: with_orientation(im.transpose(Image.ROTATE_90), "JPEG",
                                                         6)),
    ]
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        scene = photo(np.random.default_rng(100 + c), 240, 320)
        (root / f"scene{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(90, 200), rng.integers(90, 260)
            y, x = rng.integers(0, 240 - h), rng.integers(0, 320 - w)
            crop = Image.fromarray(scene[y:y + h, x:x + w])
            suffix, encoder = encoders[(c + i) % len(encoders)]
            path = root / f"scene{c}" / f"{i}.{suffix}"
            path.write_bytes(encoder(crop))
            paths.append(str(path))
    return paths
