"""Client-side image reading and input checks for the serving clients and the edge script.

Needs only numpy and Pillow, so it travels with `edge_infer.py` to devices without TensorFlow.

`decode_image` is the Pillow twin of the exported graph's decoder (dnc_keras/preprocessing.py):
the two give the same uint8 pixels for every encoding the tests hold (EXIF-rotated, palette,
transparency, 16-bit, CMYK, grey), so pixels decoded here and sent to `serving_default` or ONNX
Runtime give the embeddings training and evaluation gave. The checks mirror the asserts inside
the exported graph (dnc_keras/export/signatures.py): a bad request fails here, with the same
wording, before it is sent; a decompression bomb is refused from its header, before decoding,
by a plain-Python reading of PNG, JPEG, GIF and BMP headers (`declared_size`, the twin of
dnc_keras/image_header.py); like the graph's decoder, this one reads those four formats only.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import struct
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The defaults of dnc_keras.export.signatures.Bounds; an export records its own.
DEFAULT_MAX_SIDE = 4096
DEFAULT_MAX_BATCH = 128
DEFAULT_MAX_PIXELS = 4032 * 3024
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class InputError(ValueError):
    """A request the model would reject: wrong dtype, shape, channels, size or a bad file."""


@dataclasses.dataclass
class Contract:
    """What an export accepts and how its files are decoded (from its manifest)."""

    channels: int | None = None
    background: int = 255
    max_side: int = DEFAULT_MAX_SIDE
    max_batch: int = DEFAULT_MAX_BATCH
    max_pixels: int = DEFAULT_MAX_PIXELS


def load_contract(manifest_path):
    """The `Contract` of an export's manifest.json; InputError naming a missing or mistyped
    field."""
    manifest = read_manifest(manifest_path)
    record, bounds = manifest["preprocessing"], manifest["bounds"]
    return Contract(_int(record, "channels", manifest_path, "preprocessing."),
                    _int(record, "background", manifest_path, "preprocessing."),
                    *(_int(bounds, key, manifest_path, "bounds.")
                      for key in ("max_side", "max_batch", "max_pixels")))


def read_manifest(manifest_path):
    """An export's manifest.json as a dict with its `preprocessing` and `bounds` objects."""
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except OSError as error:
        raise InputError(f"{manifest_path}: cannot read ({error.strerror})") from None
    except ValueError as error:
        raise InputError(f"{manifest_path}: not valid JSON ({error})") from None
    for key in ("preprocessing", "bounds"):
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), dict):
            raise InputError(f"{manifest_path}: not a dnc_keras export manifest (field {key!r} "
                             "is missing or not an object)")
    return manifest


def _int(mapping, key, where, prefix):
    value = mapping.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        state = "is missing" if key not in mapping else f"must be an int >= 0; got {value!r}"
        raise InputError(f"{where}: field {prefix + key!r} {state}")
    return value


def verify_onnx(manifest_path, onnx_path, metadata_bounds):
    """Checks an ONNX file against the export manifest beside it: the file is one of its
    artifacts (inside the manifest's folder), its SHA-256 is the recorded one, and the bounds
    in its metadata are the manifest's. Raises InputError naming the file otherwise."""
    manifest = read_manifest(manifest_path)
    root = os.path.realpath(os.path.dirname(os.path.abspath(manifest_path)))
    real = os.path.realpath(onnx_path)
    if os.path.commonpath([root, real]) != root:
        raise InputError(f"{onnx_path} leaves the export folder {root} of {manifest_path}")
    artifacts = manifest.get("artifacts")
    relative = os.path.relpath(real, root)
    if not isinstance(artifacts, dict) or relative not in artifacts:
        raise InputError(f"{onnx_path} is not among the artifacts of {manifest_path}")
    if sha256(real) != artifacts[relative]:
        raise InputError(f"{onnx_path} differs from the export: its SHA-256 is not the one "
                         f"{manifest_path} records (corrupted or changed since; export again)")
    expected = {key: _int(manifest["bounds"], key, manifest_path, "bounds.")
                for key in ("max_side", "max_batch", "max_pixels")}
    if metadata_bounds != expected:
        raise InputError(f"{onnx_path} enforces other bounds ({metadata_bounds}) than "
                         f"{manifest_path} says ({expected})")


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def find_manifest(path):
    """manifest.json beside an ONNX file or inside an export folder, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, "manifest.json")
    return candidate if os.path.exists(candidate) else None


# -- what a file declares, before decoding ---------------------------------------------------
# The plain-Python twin of dnc_keras/image_header.py (the tests compare the two).

def declared_size(data, name="image"):
    """(height, width, pixels) a PNG, JPEG, GIF or BMP file declares in its header; `pixels`
    is height x width, except for a GIF: every frame's area (TensorFlow's reader decodes every
    frame). InputError for another format or a header cut short."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 33:
            raise _truncated(name, data)
        width, height = struct.unpack(">II", data[16:24])
        return height, width, height * width
    if data.startswith(_JPEG_MAGIC):
        return _jpeg_size(data, name)
    if data.startswith((b"GIF87a", b"GIF89a")):
        if len(data) < 10:
            raise _truncated(name, data)
        return _gif_size(data)
    if data.startswith(b"BM"):
        if len(data) < 26:
            raise _truncated(name, data)
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 core header: 16-bit sizes
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = (abs(v) for v in struct.unpack("<ii", data[18:26]))
        return height, width, height * width
    raise InputError(f"{name}: not a PNG, JPEG, GIF or BMP file; its first bytes are "
                     f"[{' '.join(str(b) for b in data[:8])}]")


def _truncated(name, data):
    return InputError(f"{name}: truncated image file: shorter than its header; its length in "
                      f"bytes is [{len(data)}]")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data, name):
    """(height, width, pixels) from a JPEG's start-of-frame segment, walking the markers."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _SOF and at + 9 <= len(data):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return height, width, height * width
        at += 2 + length
    raise InputError(f"{name}: corrupt or truncated JPEG: no frame header before byte {at}")


def _gif_size(data):
    """(height, width, pixels) of a GIF: its screen grown to every frame's extent, and the
    frames' total area, walking the blocks as dnc_keras/image_header.py does."""
    def table(packed):
        return 3 * (2 << (packed & 7)) if packed & 0x80 else 0

    width, height = struct.unpack("<HH", data[6:10])
    pixels, at, size = 0, 13 + table(data[10]) if len(data) > 10 else 13, len(data)
    padded = data + bytes(16)
    while at < size:
        block = padded[at]
        if block == 0x21:  # extension: introducer, label, sub-blocks
            at += 2
        elif block == 0x2C:  # image descriptor: left, top, width, height, packed
            left, top, w, h = struct.unpack("<HHHH", padded[at + 1:at + 9])
            height, width = max(height, top + h), max(width, left + w)
            pixels += w * h
            at += 10 + table(padded[at + 9]) + 1  # + LZW minimum code size
        else:  # the trailer, or anything but a block, ends the walk
            break
        while at < size and padded[at] != 0:  # sub-blocks, each led by its length
            at += padded[at] + 1
        at += 1
    return height, width, max(pixels, height * width)


def check_declared(data, name, max_side=DEFAULT_MAX_SIDE, max_pixels=DEFAULT_MAX_PIXELS):
    """(height, width, pixels) of the file, refused from its header beyond the bounds."""
    height, width, pixels = declared_size(data, name)
    if min(height, width) < 1 or max(height, width) > max_side or pixels > max_pixels:
        raise InputError(f"{name}: refused before decoding: an image must have sides in "
                         f"[1, {max_side}] and at most {max_pixels} pixels; its header "
                         f"declares height, width, pixels [{height} {width} {pixels}]")
    return height, width, pixels


def check_images(images, channels, max_side=DEFAULT_MAX_SIDE, max_batch=DEFAULT_MAX_BATCH,
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Returns `images` if it is a non-empty uint8 [batch, h, w, channels] within the bounds;
    raises InputError naming what is wrong otherwise, in the words of the graph's asserts
    (dnc_keras/export/signatures.py) followed by the shape."""
    images = np.asarray(images)
    shape = "[" + " ".join(str(d) for d in images.shape) + "]"
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 (0..255); got dtype {images.dtype}. Convert "
                         "with np.clip(x * 255, 0, 255).round().astype(np.uint8) if you have "
                         "floats in [0, 1]")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise InputError(f"images must be uint8 [batch, height, width, {channels}] ({channels} "
                         f"is the channel count of the model); got shape {shape}")
    if images.shape[0] == 0:
        raise InputError(f"images is an empty batch; got shape {shape}")
    if images.shape[0] > max_batch:
        raise InputError(f"images holds more than the bound of {max_batch} images per "
                         f"request; got shape {shape}")
    if min(images.shape[1:3]) < 1:
        raise InputError(f"images must have height and width >= 1; got shape {shape}")
    if max(images.shape[1:3]) > max_side:
        raise InputError(f"images larger than the serving bound of {max_side} px per side; "
                         f"got shape {shape}")
    if images.shape[0] * images.shape[1] * images.shape[2] > max_pixels:
        raise InputError(f"request larger than the bound of {max_pixels} pixels; got shape "
                         f"{shape}")
    return images


def _open(data, name, max_side, max_pixels):
    """A Pillow image of encoded bytes, its size checked from the header before decoding."""
    check_declared(data, name, max_side, max_pixels)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # another reading of the header
        raise InputError(f"{name}: refused before decoding: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image ({error})") from None
    width, height = img.size
    if max(width, height) > max_side or width * height > max_pixels:
        raise InputError(f"{name}: refused before decoding: an image must have sides in "
                         f"[1, {max_side}] and at most {max_pixels} pixels; Pillow reads "
                         f"height, width [{height} {width}] from its header")
    return img


def check_encoded(data, max_side=DEFAULT_MAX_SIDE, name="image", max_pixels=DEFAULT_MAX_PIXELS):
    """Returns `data` if it is a complete JPEG or PNG file within the bounds."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError(f"{name}: expected the bytes of a JPEG or PNG file; got "
                         f"{type(data).__name__} of length {len(data) if data else 0}")
    if not data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        raise InputError(f"{name}: not a JPEG or PNG file (the server decodes those only); "
                         f"its first bytes are {list(data[:8])}")
    img = _open(bytes(data), name, max_side, max_pixels)
    try:
        with img:
            img.load()  # decodes everything: truncated or damaged files fail here
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image bytes ({error})") from None
    return bytes(data)


def check_encoded_batch(encoded, contract):
    """A request of encoded JPEG/PNG files checked as the `serving_bytes` graph checks it:
    non-empty, within the batch bound, each file within the bounds from its header, and the
    pixels they declare together within the pixel bound. Returns the list of bytes."""
    encoded = list(encoded)
    if not encoded:
        raise InputError("image_bytes is an empty batch; got shape [0]")
    if len(encoded) > contract.max_batch:
        raise InputError(f"image_bytes holds more than the bound of {contract.max_batch} "
                         f"images per request; got shape [{len(encoded)}]")
    checked = [check_encoded(data, contract.max_side, f"image_bytes[{i}]",
                             contract.max_pixels) for i, data in enumerate(encoded)]
    total = sum(declared_size(data)[2] for data in checked)
    if total > contract.max_pixels:
        raise InputError(f"request larger than the bound of {contract.max_pixels} pixels; the "
                         f"pixels its files declare [{total}]")
    return checked


def decode_image(data, channels, background=255, name="image", max_pixels=DEFAULT_MAX_PIXELS,
                 max_side=DEFAULT_MAX_SIDE):
    """Encoded image bytes -> uint8 [h, w, channels], upright: the Pillow twin of the graph's
    `dnc_keras.preprocessing.decode`, pixel for pixel (the tests compare them).

    EXIF orientation applied; palette and grey expanded; transparency composited over
    `background` (0-255); 16-bit samples -> high byte; CMYK -> RGB as (255-C)(255-K)/255;
    colour to grey with Pillow's integer ITU-R 601 weights. GIF (first frame) and BMP decode
    opaque, as TensorFlow decodes them.
    """
    if channels not in (1, 3):
        raise InputError(f"{name}: decoding supports models with 1 or 3 channels; got "
                         f"{channels}")
    img = _open(data, name, max_side, max_pixels)
    try:
        with img:
            img.load()
            opaque = img.format in ("GIF", "BMP")
            rgb, alpha = _rgb_alpha(ImageOps.exif_transpose(img), opaque)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image ({error})") from None
    if alpha is not None and alpha.min() < 255:
        # int32 holds every intermediate (at most 255 * 255 + 255 * 255 + 127).
        alpha = alpha.astype(np.int32)
        rgb = (rgb * alpha + int(background) * (255 - alpha) + 127) // 255
    # Opaque pixels composite to themselves ((255 v + 127) // 255 = v): no copy is made.
    if channels == 1:
        r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
        rgb = ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16)[..., None]
    return rgb.astype(np.uint8, copy=False)


def _rgb_alpha(img, opaque):
    """(rgb [h, w, 3], alpha [h, w, 1] or None) of a decoded Pillow image (see
    `decode_image`): uint8 where Pillow gives 8 bits, so a large photograph costs its own size
    a few times over, not eight-byte integers per sample."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = (np.asarray(img).astype(np.int32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1), None
    if img.mode == "CMYK":
        cmyk = np.asarray(img).astype(np.int32)
        return ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) // 255).astype(np.uint8), None
    if img.mode == "RGB":
        return np.asarray(img), None  # no conversion copy: a photograph's usual mode
    if opaque or (img.mode in ("1", "L", "P", "YCbCr", "HSV", "LAB")
                  and "transparency" not in img.info):
        return np.asarray(img.convert("RGB")), None
    rgba = np.asarray(img.convert("RGBA"))
    return rgba[..., :3], rgba[..., 3:]


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None


def read_image(path, channels, background=255, max_pixels=DEFAULT_MAX_PIXELS,
               max_side=DEFAULT_MAX_SIDE):
    """An image file as uint8 [h, w, channels], decoded as the model's training data was
    (`decode_image`), refused from its header beyond the bounds."""
    return decode_image(read_bytes(path), channels, background, name=path,
                        max_pixels=max_pixels, max_side=max_side)


def read_encoded(path, max_side=DEFAULT_MAX_SIDE, max_pixels=DEFAULT_MAX_PIXELS):
    """A JPEG or PNG file's bytes, checked with `check_encoded`."""
    return check_encoded(read_bytes(path), max_side, name=path, max_pixels=max_pixels)


def group_by_shape(images):
    """{shape: [indices]} so that images of one size go in one batch."""
    groups = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    return groups


def embed_files(client, paths, pixels=False):
    """Image files -> embeddings through a client's `embed_bytes`, or with `pixels=True` its
    `embed` on arrays decoded here by the export's record, one request per image size."""
    paths = list(paths)
    contract = client.contract
    if not pixels:
        return client.embed_bytes([read_encoded(p, contract.max_side, contract.max_pixels)
                                   for p in paths])
    images = [read_image(p, client.channels, contract.background, contract.max_pixels,
                         contract.max_side) for p in paths]
    out = [None] * len(images)
    for indices in group_by_shape(images).values():
        batch = client.embed(np.stack([images[i] for i in indices]))
        for i, row in zip(indices, batch):
            out[i] = row
    return np.stack(out)


# -- the clients' command line ----------------------------------------------------------------
def add_client_arguments(parser, pixels_help):
    """The arguments the gRPC and REST clients share (each adds its server address)."""
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--manifest", help="the export's manifest.json (decoding and bounds; "
                        "default: the server's channels and the default bounds)")
    parser.add_argument("--pixels", action="store_true", help=pixels_help)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--index", help="an index folder (dnc-keras build-index): print each "
                        "image's matches and answer, 'unknown' beyond the index's calibrated "
                        "threshold (needs faiss; gallery_search.py)")
    parser.add_argument("-k", type=int, default=5, help="with --index: matches per image")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --index: the distance beyond which an image is unknown "
                             "(default: the index's calibrated threshold)")


def run_client(prog, args, connect, errors):
    """Embeds `args.images` through `connect(contract)` (a client, or a context manager of
    one) and prints them, or with `args.index` their matches in that index; 2 with the error
    on stderr where `errors` (or a bad input or index) is raised."""
    import gallery_search

    if args.index and args.k < 1:
        print(f"{prog}: error: -k must be >= 1. Received: -k {args.k}", file=sys.stderr)
        return 2
    try:
        contract = load_contract(args.manifest) if args.manifest else Contract()
        index = gallery_search.GalleryIndex(args.index, args.manifest) if args.index else None
        client = connect(contract)
        closing = client if hasattr(client, "__exit__") else contextlib.nullcontext(client)
        with closing:
            embeddings = client.embed_files(args.images, pixels=args.pixels)
        if index is not None:
            results = index.search(embeddings, args.k, args.threshold)
    except (InputError, gallery_search.IndexFileError) + tuple(errors) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if index is None:
        print_embeddings(args.images, embeddings)
    else:
        for path, result in zip(args.images, results):
            print(json.dumps({"image": path, **result}))
    return 0


def print_embeddings(paths, embeddings):
    """One JSON line per image: {"image": path, "embedding": [...]}."""
    for path, embedding in zip(paths, embeddings):
        print(json.dumps({"image": path, "embedding": [round(float(v), 7) for v in embedding]}))
