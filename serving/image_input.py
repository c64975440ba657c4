"""Client-side input checks and image reading for the serving clients and the edge script.

Needs only numpy and Pillow, so it travels with `edge_infer.py` to devices without TensorFlow.
The checks mirror the asserts inside the exported graph (dnc_keras/serving_signatures.py):
a bad request fails here, with the same wording, before it is sent.
"""

import contextlib
import io
import json
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

# Same default as dnc_keras.serving_signatures.DEFAULT_MAX_SIDE; the manifest has the value an
# export was made with.
DEFAULT_MAX_SIDE = 4096
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class InputError(ValueError):
    """A request the model would reject: wrong dtype, shape, channels, size or a bad file."""


def load_contract(manifest_path):
    """(channels, max_side, model_input_shape) from an export's manifest.json."""
    with open(manifest_path) as f:
        manifest = json.load(f)
    contract = manifest["input"]
    return int(contract["channels"]), int(contract["max_side"]), contract["model_input_shape"]


def find_manifest(path):
    """manifest.json beside an ONNX file or inside an export folder, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, "manifest.json")
    return candidate if os.path.exists(candidate) else None


def check_images(images, channels, max_side=DEFAULT_MAX_SIDE):
    """Returns `images` if it is a non-empty uint8 [batch, h, w, channels] with sides in
    [1, max_side]; raises InputError naming what is wrong otherwise."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 (0..255); got dtype {images.dtype}. Convert "
                         "with np.clip(x * 255, 0, 255).round().astype(np.uint8) if you have "
                         "floats in [0, 1]")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise InputError(f"images must be uint8 [batch, height, width, {channels}] ({channels} "
                         f"is the model's channel count); got shape {list(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"images is an empty batch; got shape {list(images.shape)}")
    if min(images.shape[1:3]) < 1:
        raise InputError(f"images must have height and width >= 1; got shape "
                         f"{list(images.shape)}")
    if max(images.shape[1:3]) > max_side:
        raise InputError(f"images larger than the serving bound of {max_side} px per side; "
                         f"got shape {list(images.shape)}")
    return images


def check_encoded(data, max_side=DEFAULT_MAX_SIDE, name="image"):
    """Returns `data` if it is a complete JPEG or PNG file no larger than max_side per side."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError(f"{name}: expected the bytes of a JPEG or PNG file; got "
                         f"{type(data).__name__} of length {len(data) if data else 0}")
    if not data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        raise InputError(f"{name}: not a JPEG or PNG file (the server decodes those only); "
                         f"its first bytes are {list(data[:8])}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max(width, height) <= max_side:
                img.load()  # decodes everything: truncated or damaged files fail here
    except Image.DecompressionBombError as error:
        raise InputError(f"{name}: image far larger than the serving bound of {max_side} px "
                         f"per side ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{name}: corrupt or unreadable image bytes ({error})") from error
    if max(width, height) > max_side or min(width, height) < 1:
        raise InputError(f"{name}: encoded image must have sides in [1, {max_side}] (the "
                         f"serving bound); got height, width {height}, {width}")
    return bytes(data)


def read_image(path, channels):
    """An image file as uint8 [h, w, channels] (Pillow `convert("L")` / `convert("RGB")`, as
    the training data was read)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise InputError(f"reading files supports models with 1 or 3 channels; got {channels}")
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img.convert(mode), np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(f"{path}: corrupt or unreadable image ({error})") from error
    return array[..., None] if array.ndim == 2 else array


def read_encoded(path, max_side=DEFAULT_MAX_SIDE):
    """A JPEG or PNG file's bytes, checked with `check_encoded`."""
    with open(path, "rb") as f:
        return check_encoded(f.read(), max_side, name=path)


def group_by_shape(images):
    """{shape: [indices]} so that images of one size go in one batch."""
    groups = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    return groups


def embed_files(client, paths, pixels=False):
    """Image files -> embeddings through a client's `embed_bytes`, or with `pixels=True` its
    `embed` on decoded uint8 arrays, one request per image size (serving_default batches only
    images that share a size)."""
    paths = list(paths)
    if not pixels:
        return client.embed_bytes([read_encoded(p, client.max_side) for p in paths])
    images = [read_image(p, client.channels) for p in paths]
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
    parser.add_argument("--manifest", help="the export's manifest.json (channels, max side)")
    parser.add_argument("--pixels", action="store_true", help=pixels_help)
    parser.add_argument("--timeout", type=float, default=30.0)


def run_client(prog, args, connect, errors):
    """Embeds `args.images` through `connect(channels, max_side)` (a client, or a context
    manager of one) and prints them; 2 with the error on stderr where `errors` is raised."""
    channels, max_side = None, DEFAULT_MAX_SIDE
    if args.manifest:
        channels, max_side, _ = load_contract(args.manifest)
    try:
        client = connect(channels, max_side)
        closing = client if hasattr(client, "__exit__") else contextlib.nullcontext(client)
        with closing:
            embeddings = client.embed_files(args.images, pixels=args.pixels)
    except errors as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print_embeddings(args.images, embeddings)
    return 0


def print_embeddings(paths, embeddings):
    """One JSON line per image: {"image": path, "embedding": [...]}."""
    for path, embedding in zip(paths, embeddings):
        print(json.dumps({"image": path, "embedding": [round(float(v), 7) for v in embedding]}))
