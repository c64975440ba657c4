"""Client-side image reading and input checks for the serving clients and the edge script.

Needs only numpy and Pillow, so it travels with `edge_infer.py` to devices without TensorFlow.

`decode_image` is the Pillow twin of the exported graph's decoder (dnc_keras/preprocessing.py):
the two give the same uint8 pixels for every encoding the tests hold (EXIF-rotated, palette,
transparency, 16-bit, CMYK, grey), so pixels decoded here and sent to `serving_default` or ONNX
Runtime give the embeddings training and evaluation gave. The checks mirror the asserts inside
the exported graph (dnc_keras/export/signatures.py): a bad request fails here, with the same
wording, before it is sent; a decompression bomb is refused from its header, before decoding.
"""

import contextlib
import dataclasses
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The defaults of dnc_keras.export.signatures.Bounds; an export records its own.
DEFAULT_MAX_SIDE = 4096
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_PIXELS = 40_000_000
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
    """The `Contract` of an export's manifest.json."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        record, bounds = manifest["preprocessing"], manifest["bounds"]
        return Contract(int(record["channels"]), int(record["background"]),
                        int(bounds["max_side"]), int(bounds["max_batch"]),
                        int(bounds["max_pixels"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{manifest_path}: not a dnc_keras export manifest ({error})") from None


def find_manifest(path):
    """manifest.json beside an ONNX file or inside an export folder, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, "manifest.json")
    return candidate if os.path.exists(candidate) else None


def check_images(images, channels, max_side=DEFAULT_MAX_SIDE, max_batch=DEFAULT_MAX_BATCH,
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Returns `images` if it is a non-empty uint8 [batch, h, w, channels] within the bounds;
    raises InputError naming what is wrong otherwise."""
    images = np.asarray(images)
    shape = list(images.shape)
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 (0..255); got dtype {images.dtype}. Convert "
                         "with np.clip(x * 255, 0, 255).round().astype(np.uint8) if you have "
                         "floats in [0, 1]")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise InputError(f"images must be uint8 [batch, height, width, {channels}] ({channels} "
                         f"is the model's channel count); got shape {shape}")
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


def _open(data, name, max_pixels):
    """A Pillow image of encoded bytes, its size checked from the header before decoding."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InputError(f"{name}: refused before decoding, {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image ({error})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise InputError(f"{name}: refused before decoding, it declares {width} x {height} = "
                         f"{width * height} pixels, more than the bound of {max_pixels}")
    return img


def check_encoded(data, max_side=DEFAULT_MAX_SIDE, name="image", max_pixels=DEFAULT_MAX_PIXELS):
    """Returns `data` if it is a complete JPEG or PNG file within the bounds."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError(f"{name}: expected the bytes of a JPEG or PNG file; got "
                         f"{type(data).__name__} of length {len(data) if data else 0}")
    if not data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        raise InputError(f"{name}: not a JPEG or PNG file (the server decodes those only); "
                         f"its first bytes are {list(data[:8])}")
    img = _open(bytes(data), name, max_pixels)
    width, height = img.size
    if max(width, height) > max_side or min(width, height) < 1:
        raise InputError(f"{name}: encoded image must have sides in [1, {max_side}] (the "
                         f"serving bound); got height, width {height}, {width}")
    try:
        with img:
            img.load()  # decodes everything: truncated or damaged files fail here
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image bytes ({error})") from None
    return bytes(data)


def decode_image(data, channels, background=255, name="image", max_pixels=DEFAULT_MAX_PIXELS):
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
    img = _open(data, name, max_pixels)
    try:
        with img:
            img.load()
            opaque = img.format in ("GIF", "BMP")
            rgba = _rgba(ImageOps.exif_transpose(img), opaque)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image ({error})") from None
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    rgb = (rgb * alpha + int(background) * (255 - alpha) + 127) // 255
    if channels == 1:
        rgb = (rgb @ np.array([19595, 38470, 7471], np.int64) + 32768)[..., None] >> 16
    return rgb.astype(np.uint8)


def _rgba(img, opaque):
    """int64 [h, w, 4] of a decoded Pillow image (see `decode_image`)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img).astype(np.int64) >> 8
        return np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)
    if img.mode == "CMYK":
        cmyk = np.asarray(img).astype(np.int64)
        rgb = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) // 255
        return np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1)
    if opaque:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
        return np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1)
    return np.asarray(img.convert("RGBA")).astype(np.int64)


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None


def read_image(path, channels, background=255, max_pixels=DEFAULT_MAX_PIXELS):
    """An image file as uint8 [h, w, channels], decoded as the model's training data was
    (`decode_image`)."""
    return decode_image(read_bytes(path), channels, background, name=path, max_pixels=max_pixels)


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
    images = [read_image(p, client.channels, contract.background, contract.max_pixels)
              for p in paths]
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
