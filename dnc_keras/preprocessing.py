"""The one record of how an image becomes model input, and the one implementation that runs it.

A `Preprocessing` record travels with a run (`preprocessing.json`, the model's config) and its
export (the manifest). Every path that turns pixels into model input calls `transform` below:
the in-memory loaders, the on-disk pipeline, evaluation, both SavedModel signatures, and the
ONNX graph (converted from the same TensorFlow function), which is what `serving/edge_infer.py`
runs. So a model is served on exactly what it was trained and evaluated on.

Resizing is antialiased (Pillow's definition of each filter: the kernel is stretched by the
downscale factor, every output pixel is a normalised weighted sum of the input pixels under it)
and written as two matrix products, width then height (Pillow's order), with weights computed
from the input's shape inside the graph. TensorFlow's own antialiased kernel (ScaleAndTranslate)
does not convert to ONNX; two MatMuls convert and run alike in both runtimes. By default the
passes are float, and match Pillow's float ("F" mode) resampling to float32 precision. With
`rounding="uint8"` the weights are Pillow's 22-bit coefficients, summed exactly in float64, and
each pass is rounded to 8 bits: Pillow's 8-bit resize to the bit, so a model trained on
Pillow-resized images is served the same pixels, and TensorFlow and ONNX Runtime cannot round
a sample apart (tests/test_preprocessing.py).

Decoding (`decode`) is the graph version of what `serving/image_input.py` does with Pillow, and
both produce the same uint8 pixels (tests compare them bit for bit): EXIF orientation applied
(JPEG APP1, PNG eXIf), palette and grey expanded, transparency composited over `background`,
16-bit samples reduced to their high byte, CMYK JPEGs converted as (255 - C)(255 - K) / 255,
colour to grey with Pillow's integer ITU-R 601 weights. JPEGs decode with the accurate integer
DCT, as Pillow's libjpeg does (TensorFlow's default fast DCT differs on most pixels).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re

from dnc_keras.image_header import JPEG_MAGIC, PNG_MAGIC  # noqa: F401  (re-exported)
from dnc_keras_cli.options import FILE_LIMITS

FITS = ("stretch", "crop", "pad")
KERNELS = ("bilinear", "bicubic", "lanczos")
ROUNDINGS = ("uint8", "float")
PILLOW_PRECISION_BITS = 22  # fractional bits of Pillow's 8-bit resampling coefficients
CHANNELS = (1, 3)
# Filter support of each kernel, in input pixels at scale 1 (Pillow's Resample.c).
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_BICUBIC_A = -0.5
# Bytes scanned for an EXIF block; Exif APP1 segments are limited to 64 KiB.
EXIF_SCAN_BYTES = 65536
DECODING = ("EXIF orientation applied; palette and grey expanded; transparency composited over "
            "`background`; 16-bit samples -> high byte; CMYK -> RGB as (255-C)(255-K)/255; "
            "RGB -> grey as Pillow's L = (19595 R + 38470 G + 7471 B + 32768) >> 16; JPEG with "
            "the accurate integer DCT")
SCALING = "float32 x / 255 in [0, 1], clipped; 1 - x when invert"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image file or array becomes the model's float32 input.

    Args:
        size: (height, width) of the model input.
        channels: `1` (grey) or `3` (RGB). Defaults to `3`.
        fit: how an image meets `size`. `"stretch"` resizes to `size` whatever the aspect
            ratio; `"crop"` resizes the shorter side to `resize_to` (the longer one to
            `int(resize_to * longer / shorter)`, as torchvision's `Resize(int)`) and cuts the
            centre `size`; `"pad"` resizes to fit inside `size` and pads with black.
            Defaults to `"stretch"`.
        resize_to: `"crop"` only: the shorter side before the centre crop. Defaults to `None`:
            `max(size)`. The papers' evaluation is 256 for a 224 crop.
        kernel: the antialiased resampling filter, `"bilinear"`, `"bicubic"` or `"lanczos"`
            (Pillow's). Defaults to `"lanczos"`.
        invert: feed `1 - x` (Omniglot's loader draws strokes bright on black).
            Defaults to `False`.
        background: grey level (0-255) transparent pixels are composited over.
            Defaults to `255` (white).
        rounding: the samples between and after the two resize passes. `"float"` keeps float
            passes and clips once at the end (Pillow on an `"F"` image). `"uint8"` rounds (half
            up) and clips each pass to 0-255 with Pillow's 22-bit coefficients, summed exactly
            in float64: Pillow's `Image.resize` on an 8-bit image (and so torchvision's
            `Resize` on one) to the bit, a filter's overshoot cut between the passes. Its
            float64 sums cost more CPU and memory on large requests than the float passes;
            Omniglot's record uses it, as its models were trained on Pillow-resized drawings.
            Defaults to `"float"`.
    """

    size: tuple[int, int]
    channels: int = 3
    fit: str = "stretch"
    resize_to: int | None = None
    kernel: str = "lanczos"
    invert: bool = False
    background: int = 255
    rounding: str = "float"

    def __post_init__(self):
        size = self.size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                           for s in size)):
            raise ValueError(f"size must be a positive int or a (height, width) pair of positive "
                             f"ints. Received: size={self.size!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        _check_choice("channels", self.channels, CHANNELS)
        _check_choice("fit", self.fit, FITS)
        _check_choice("kernel", self.kernel, KERNELS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        if self.resize_to is not None:
            if self.fit != "crop":
                raise ValueError(f"resize_to applies to fit='crop' only. Received: fit="
                                 f"{self.fit!r}, resize_to={self.resize_to!r}")
            if not isinstance(self.resize_to, int) or self.resize_to < max(self.size):
                raise ValueError(f"resize_to must be an int >= the larger side of size "
                                 f"{self.size}. Received: resize_to={self.resize_to!r}")
        if not isinstance(self.invert, bool):
            raise ValueError(f"invert must be True or False. Received: invert={self.invert!r}")
        if not isinstance(self.background, int) or not 0 <= self.background <= 255:
            raise ValueError(f"background must be an int in [0, 255]. Received: "
                             f"background={self.background!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the model input."""
        return (*self.size, self.channels)

    @property
    def crop_side(self) -> int:
        """The shorter side before the centre crop (`"crop"`)."""
        return self.resize_to or max(self.size)

    def to_dict(self) -> dict:
        """The record as JSON-able settings, with the fixed decoding and scaling spelled out."""
        values = dataclasses.asdict(self)
        values["size"] = list(self.size)
        return {**values, "decoding": DECODING, "scaling": SCALING}

    @classmethod
    def from_dict(cls, values) -> "Preprocessing":
        """The record of `to_dict` (the descriptive keys are ignored); checks every field."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"a preprocessing record must be a mapping. Received: "
                             f"{type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"decoding", "scaling"})
        if unknown:
            raise ValueError(f"preprocessing record has unknown key(s) {unknown}; expected "
                             f"{sorted(known)}")
        missing = sorted({"size"} - set(values))
        if missing:
            raise ValueError(f"preprocessing record lacks {missing}")
        fields = {k: v for k, v in values.items() if k in known}
        fields["size"] = tuple(fields["size"]) if isinstance(fields["size"], list) \
            else fields["size"]
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        """One line for logs and the dry run."""
        h, w = self.size
        colour = "grey" if self.channels == 1 else "RGB"
        geometry = {"stretch": f"resize to {h}x{w}",
                    "crop": f"shorter side {self.crop_side}, centre crop {h}x{w}",
                    "pad": f"fit inside {h}x{w}, pad black"}[self.fit]
        passes = "8-bit passes" if self.rounding == "uint8" else "float passes"
        return (f"{colour}, {geometry} ({self.kernel}, antialiased, {passes}), x/255"
                + (", inverted" if self.invert else ""))


def _check_choice(name, value, allowed):
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"{name} must be one of {allowed}. Received: {name}={value!r}")


# -- resizing: two matrix products --------------------------------------------------------

def kernel_weights(name, x):
    """The filter `name` evaluated at distances `x` (in filter units), as Pillow defines it."""
    import tensorflow as tf

    ax = tf.abs(x)
    if name == "bilinear":
        return tf.maximum(1.0 - ax, 0.0)
    if name == "bicubic":
        a = _BICUBIC_A
        near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
        far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
        return tf.where(ax < 1.0, near, tf.where(ax < 2.0, far, tf.zeros_like(ax)))
    if name == "lanczos":
        return tf.where(ax < 3.0, _sinc(x) * _sinc(x / 3.0), tf.zeros_like(ax))
    raise ValueError(f"kernel must be one of {KERNELS}. Received: {name!r}")


def _sinc(x):
    import tensorflow as tf

    zero = tf.equal(x, 0.0)
    px = math.pi * tf.where(zero, tf.ones_like(x), x)
    return tf.where(zero, tf.ones_like(x), tf.sin(px) / px)


def resize_matrix(in_size, out_size, kernel, dtype="float32"):
    """[out_size, in_size] of `dtype`: row i holds the weights of output pixel i over the input.

    Pillow's antialiased resampling: scale = in / out, the filter stretched by max(scale, 1),
    output pixel i centred at (i + 0.5) * scale, weights normalised to sum to 1 over the input
    pixels the filter covers. Equal sizes give the identity exactly (Pillow copies).
    """
    import tensorflow as tf

    in_size, out_size = tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32)
    # Distance of input pixel j from output pixel i's centre, in filter units:
    # ((j + 0.5) - (i + 0.5) * in / out) / max(in / out, 1)
    #   = ((2j + 1) * out - (2i + 1) * in) / (2 * max(in, out)),
    # an exact integer numerator and one rounding, so large images lose no precision.
    numerator = ((2 * tf.range(in_size) + 1)[None, :] * out_size
                 - (2 * tf.range(out_size) + 1)[:, None] * in_size)
    distance = tf.cast(numerator, dtype) / tf.cast(2 * tf.maximum(in_size, out_size), dtype)
    weights = kernel_weights(kernel, distance)
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
    # No tf.cond: it would become an ONNX If node, which onnxruntime's quantizer mangles.
    identity = tf.cast(tf.equal(tf.range(out_size)[:, None], tf.range(in_size)[None, :]),
                       dtype)
    return tf.where(tf.equal(in_size, out_size), identity, weights)


def _pillow_coefficients(weights):
    """float64 weights as Pillow's 8-bit resampling stores them: multiples of 2^-22, rounded
    half away from zero. Sums of 8-bit samples times these are integers times 2^-22 below
    2^53, exact in float64 whatever the order: TensorFlow and ONNX Runtime round alike."""
    import tensorflow as tf

    scale = float(2 ** PILLOW_PRECISION_BITS)
    return tf.sign(weights) * tf.floor(tf.abs(weights) * scale + 0.5) / scale


def _axis_matrix(record, in_size, resized, out_size, offset):
    """[out_size, in_size]: resize the axis to `resized` pixels, then keep `out_size` of them
    from `offset` (a crop when offset >= 0, black padding where offset < 0)."""
    import tensorflow as tf

    if record.rounding == "uint8":
        full = _pillow_coefficients(resize_matrix(in_size, resized, record.kernel, tf.float64))
    else:
        full = resize_matrix(in_size, resized, record.kernel)
    rows = tf.range(out_size) + offset
    inside = (rows >= 0) & (rows < resized)
    picked = tf.gather(full, tf.clip_by_value(rows, 0, resized - 1))
    return tf.where(inside[:, None], picked, tf.zeros_like(picked))


def geometry(record, height, width):
    """(rows [H, height], cols [W, width]): the record's resize, crop or pad as two matrices."""
    import tensorflow as tf

    out_h, out_w = record.size
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    if record.fit == "stretch":
        return (_axis_matrix(record, h, out_h, out_h, 0),
                _axis_matrix(record, w, out_w, out_w, 0))
    h_f, w_f = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    if record.fit == "crop":
        # torchvision's Resize(int): the shorter side becomes crop_side, the longer one
        # int(crop_side * longer / shorter); then CenterCrop's offsets round((size - out) / 2).
        side = float(record.crop_side)
        shorter = tf.minimum(h_f, w_f)
        rh = tf.where(h_f <= w_f, tf.constant(side), tf.floor(side * h_f / shorter))
        rw = tf.where(w_f <= h_f, tf.constant(side), tf.floor(side * w_f / shorter))
        rh, rw = tf.cast(rh, tf.int32), tf.cast(rw, tf.int32)
        top = tf.cast(tf.round(tf.cast(rh - out_h, tf.float32) / 2.0), tf.int32)
        left = tf.cast(tf.round(tf.cast(rw - out_w, tf.float32) / 2.0), tf.int32)
        return (_axis_matrix(record, h, rh, out_h, top),
                _axis_matrix(record, w, rw, out_w, left))
    # pad: Pillow's ImageOps.pad - the side that fits is kept, the other one rounded (half to
    # even, as Python's round and tf.round), centred at round((size - resized) / 2).
    wider = w_f * out_h > h_f * out_w
    rh = tf.where(wider, tf.round(h_f / w_f * out_w), float(out_h))
    rw = tf.where(wider, float(out_w), tf.round(w_f / h_f * out_h))
    rh = tf.maximum(tf.cast(rh, tf.int32), 1)
    rw = tf.maximum(tf.cast(rw, tf.int32), 1)
    top = tf.cast(tf.round(tf.cast(out_h - rh, tf.float32) * 0.5), tf.int32)
    left = tf.cast(tf.round(tf.cast(out_w - rw, tf.float32) * 0.5), tf.int32)
    return (_axis_matrix(record, h, rh, out_h, -top), _axis_matrix(record, w, rw, out_w, -left))


def apply_geometry(images, rows, cols, rounding="float"):
    """[b, h, w, c] (uint8 or float) -> float32 [b, H, W, c] with rows [H, h] and cols [W, w]
    (computed in their dtype); `rounding="uint8"` rounds each pass to 0-255 integers as
    Pillow's 8-bit resize does."""
    import tensorflow as tf

    def settle(x):
        # Round half up (Pillow adds half its fixed-point unit, then shifts), then clip.
        return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0) if rounding == "uint8" else x

    # Plain 2-D products, width first, then height (Pillow's order): TF 2.21's oneDNN batch
    # matmul corrupts memory when it broadcasts its second operand over 128+ images.
    shape = tf.shape(images)
    b, h, c = shape[0], shape[1], shape[3]
    out_h, out_w = tf.shape(rows)[0], tf.shape(cols)[0]
    # Transposed before the cast to the matrices' float type: a uint8 request is then copied
    # once at 4 (8) bytes a sample, not twice (the cost of a request at its bounds,
    # docs/reliability.md).
    x = tf.cast(tf.transpose(images, [0, 1, 3, 2]), rows.dtype)       # [b, h, c, w]
    x = settle(tf.matmul(tf.reshape(x, [b * h * c, -1]), cols, transpose_b=True))
    x = tf.transpose(tf.reshape(x, [b, h, c, out_w]), [0, 2, 3, 1])   # [b, c, W, h]
    x = settle(tf.matmul(tf.reshape(x, [b * c * out_w, h]), rows, transpose_b=True))
    return tf.cast(tf.transpose(tf.reshape(x, [b, c, out_w, out_h]), [0, 3, 2, 1]), tf.float32)


def resize(images, record):
    """uint8 or float [b, h, w, c] -> float32 [b, H, W, c] on the 0-255 scale: the record's
    geometry at the record's rounding."""
    import tensorflow as tf

    shape = tf.shape(images)
    rows, cols = geometry(record, shape[1], shape[2])
    return apply_geometry(images, rows, cols, record.rounding)


def finish(resized, record):
    """Resized pixel values (0-255 scale) -> the model input: clipped, / 255, maybe inverted."""
    import tensorflow as tf

    x = tf.clip_by_value(resized, 0.0, 255.0) / 255.0
    return 1.0 - x if record.invert else x


def transform(images, record):
    """uint8 [batch, h, w, channels] (one size) -> float32 [batch, H, W, channels] in [0, 1].

    The deterministic transform of training data, evaluation and serving alike.
    """
    import tensorflow as tf

    out = finish(resize(tf.convert_to_tensor(images), record), record)
    out.set_shape([None, *record.shape])
    return out


# -- decoding -----------------------------------------------------------------------------

def _read_uint(data, at, width, little):
    """Unsigned int of `width` bytes at positions `at` (tensor) of uint8 vector `data`."""
    import tensorflow as tf

    value = tf.zeros_like(at)
    for k in range(width):
        byte = tf.cast(tf.gather(data, at + k), tf.int32)
        shift = tf.where(little, 8 * k, 8 * (width - 1 - k))
        value += tf.bitwise.left_shift(byte, shift)
    return value


def _first(data, length, pattern):
    """Index of the first occurrence of bytes `pattern` in data[:length], or -1."""
    import tensorflow as tf

    match = tf.ones([length], tf.bool)
    for k, byte in enumerate(pattern):
        match &= tf.equal(data[k:k + length], byte)
    found = tf.cast(tf.where(match)[:, 0], tf.int32)
    return tf.cond(tf.size(found) > 0, lambda: found[0], lambda: tf.constant(-1))


def exif_orientation(contents):
    """EXIF orientation (1-8) of a JPEG (APP1 "Exif") or PNG (eXIf chunk); 1 without one.

    Reads the TIFF header's byte order, IFD0's entries and tag 0x0112, as Pillow's
    `ImageOps.exif_transpose` does; out-of-range values count as 1.
    """
    import tensorflow as tf

    head = tf.io.decode_raw(tf.strings.substr(contents, 0, EXIF_SCAN_BYTES), tf.uint8)
    length = tf.shape(head)[0]
    # Padding keeps every read below in range; a truncated block then reads zeros.
    data = tf.concat([head, tf.zeros([16 + 12 * 64], tf.uint8)], 0)
    is_png = tf.equal(tf.strings.substr(contents, 0, len(PNG_MAGIC)), PNG_MAGIC)
    at_png, at_jpeg = _first(data, length, b"eXIf"), _first(data, length, b"Exif\x00\x00")
    tiff = tf.where(is_png, tf.where(at_png >= 0, at_png + 4, -1),
                    tf.where(at_jpeg >= 0, at_jpeg + 6, -1))

    def parse():
        little = tf.equal(tf.gather(data, tiff), 0x49)  # "II": little-endian
        ifd = tf.clip_by_value(tiff + _read_uint(data, tiff + 4, 4, little), 0, length)
        count = tf.minimum(_read_uint(data, ifd, 2, little), 64)
        entries = ifd + 2 + 12 * tf.range(count)
        tags = _read_uint(data, entries, 2, little)
        values = _read_uint(data, entries + 8, 2, little)
        hit = tf.where(tf.equal(tags, 0x0112))[:, 0]
        value = tf.cond(tf.size(hit) > 0, lambda: tf.gather(values, hit[0]),
                        lambda: tf.constant(1))
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(tiff >= 0, parse, lambda: tf.constant(1))


def orient(image, orientation):
    """[h, w, c] turned upright for an EXIF orientation 1-8 (Pillow's `exif_transpose`)."""
    import tensorflow as tf

    def transposed():
        return tf.transpose(image, [1, 0, 2])

    branches = [lambda: image,
                lambda: image[:, ::-1],
                lambda: image[::-1, ::-1],
                lambda: image[::-1, :],
                transposed,
                lambda: transposed()[:, ::-1],
                lambda: transposed()[::-1, ::-1],
                lambda: transposed()[::-1, :]]
    return tf.switch_case(orientation - 1, branches)


def _rgb(contents, background):
    """uint8 [h, w, 3] of a PNG, JPEG, GIF (first frame, opaque) or BMP (opaque), transparency
    composited over `background`.

    Opaque images stay uint8 from the decoder on: only a PNG that carries transparency goes
    through the 16-bit compositing arithmetic.
    """
    import tensorflow as tf

    def png():
        head = tf.io.decode_raw(tf.strings.substr(contents, 0, EXIF_SCAN_BYTES), tf.uint8)
        length = tf.shape(head)[0]
        # Padded so that a file shorter than its header reads zeros, not out of range.
        head = tf.concat([head, tf.zeros([32], tf.uint8)], 0)
        depth, colour_type = head[24], head[25]
        idat = _first(head, length, b"IDAT")
        trns = _first(head, length, b"tRNS")
        # Only alpha colour types and a tRNS chunk (before the image data) carry
        # transparency; TensorFlow fills the alpha of other PNGs with garbage.
        alpha = (tf.equal(colour_type, 4) | tf.equal(colour_type, 6)
                 | ((trns >= 0) & ((idat < 0) | (trns < idat))))

        def read(channels):
            def deep():  # 16-bit samples -> their high byte
                return tf.cast(tf.bitwise.right_shift(
                    tf.io.decode_png(contents, channels=channels, dtype=tf.uint16), 8), tf.uint8)

            return tf.cond(tf.equal(depth, 16), deep,
                           lambda: tf.io.decode_png(contents, channels=channels))

        return tf.cond(alpha, lambda: _composite(read(4), background), lambda: read(3))

    def jpeg():
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    is_png = tf.equal(tf.strings.substr(contents, 0, len(PNG_MAGIC)), PNG_MAGIC)
    is_jpeg = tf.io.is_jpeg(contents)
    return tf.cond(is_png, png, lambda: tf.cond(is_jpeg, jpeg, other))


def _composite(rgba, background):
    """uint8 [h, w, 4] -> uint8 [h, w, 3] over a grey `background`, rounded as Pillow's twin:
    (rgb a + background (255 - a) + 127) // 255, which stays below 2^16."""
    import tensorflow as tf

    rgb, alpha = tf.cast(rgba[..., :3], tf.uint16), tf.cast(rgba[..., 3:], tf.uint16)
    out = (rgb * alpha + tf.constant(background, tf.uint16) * (255 - alpha) + 127) // 255
    return tf.cast(out, tf.uint8)


def _grey(rgb):
    """uint8 [h, w, 3] -> [h, w, 1] with Pillow's integer ITU-R 601 weights."""
    import tensorflow as tf

    weighted = [tf.cast(rgb[..., k:k + 1], tf.int32) * weight
                for k, weight in enumerate((19595, 38470, 7471))]
    return tf.cast(tf.bitwise.right_shift(tf.add_n(weighted) + 32768, 16), tf.uint8)


def decode(contents, record, max_side=None, max_pixels=None):
    """Encoded image bytes (scalar string) -> uint8 [h, w, record.channels], upright.

    The graph twin of `serving/image_input.py`'s Pillow decoder; see the module docstring.
    The header is read first (`dnc_keras.image_header`): another format, a truncated header
    or a declared size beyond `max_side` per side or `max_pixels` in all fails, naming the
    declared size, before any pixel is decoded.

    Args:
        max_side, max_pixels: limits on the declared size. Defaults to `None`: `FILE_LIMITS`,
            the limits of a file read outside a served request (an export passes its bounds).
    """
    import tensorflow as tf

    from dnc_keras import image_header

    max_side = FILE_LIMITS["max_side"] if max_side is None else max_side
    max_pixels = FILE_LIMITS["max_pixels"] if max_pixels is None else max_pixels
    with tf.control_dependencies([image_header.check_size(contents, max_side, max_pixels)]):
        rgb = _rgb(contents, record.background)
    if record.channels == 1:
        rgb = _grey(rgb)
    image = orient(rgb, exif_orientation(contents))
    image.set_shape([None, None, record.channels])
    return image


def decode_and_transform(contents, record, max_side=None, max_pixels=None):
    """Encoded bytes -> float32 [H, W, C]: what the model sees of one file (limits as
    `decode`)."""
    return transform(decode(contents, record, max_side, max_pixels)[None], record)[0]


# -- eager helpers: files and arrays in, model input out ----------------------------------

@functools.lru_cache(maxsize=16)
def file_function(record):
    """`decode_and_transform` with this record as a traced function of one encoded file
    (scalar string). Traced once per record: tf.data pipelines built for each pass over the
    files (every evaluation, every re-clustering) call it instead of tracing the decoders
    again, which takes seconds."""
    import tensorflow as tf

    return tf.function(lambda contents: decode_and_transform(contents, record),
                       input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


@functools.lru_cache(maxsize=16)
def decode_function(record, max_side=None, max_pixels=None):
    """`decode` with these limits as a traced function of one encoded file (scalar string):
    one trace, then no per-op Python work per file."""
    import tensorflow as tf

    return tf.function(lambda contents: decode(contents, record, max_side, max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


@functools.lru_cache(maxsize=16)
def header_function(max_side=None, max_pixels=None):
    """`image_header.check_size` with these limits (`FILE_LIMITS` for None) as a traced
    function of one encoded file: its declared (height, width, pixels), refused beyond them."""
    import tensorflow as tf

    from dnc_keras import image_header

    max_side = FILE_LIMITS["max_side"] if max_side is None else max_side
    max_pixels = FILE_LIMITS["max_pixels"] if max_pixels is None else max_pixels
    return tf.function(lambda contents: image_header.check_size(contents, max_side, max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def read_file(path, record):
    """float32 [H, W, C]: one image file through `decode` and `transform`.

    Raises:
        ValueError: the file cannot be read or is not an image this decoder reads, naming it.
    """
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            contents = f.read()
    except OSError as error:
        raise ValueError(f"Cannot read image {path}: {error.strerror}") from None
    try:
        return file_function(record)(tf.constant(contents)).numpy()
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read image {path}: {error_reason(error)}") from None


def error_reason(error):
    """One line of a TensorFlow op error: a failed check (`image_header.assert_that`) as
    "message [values]", whether it ran in a graph or eagerly; any other error's first line,
    without its function-node prefix and op suffix."""
    message = getattr(error, "message", None) or str(error)
    # A loaded SavedModel's errors open with where they were raised: keep what follows.
    message = re.sub(r"^Graph execution error:\s*(Detected at node .*?\n(<stack traces "
                     r"unavailable>\n|(\s+File .*\n)+)?)?", "", message.strip(), flags=re.S)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message.strip())
    message = re.sub(r"\s*\[\[\{\{node.*$", "", message, flags=re.S)
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message, flags=re.S)
    graph = re.match(r"assertion failed: \[(.*?)\] (\[.*\])\s*$", message, flags=re.S)
    if graph:
        return f"{graph.group(1)} {' '.join(graph.group(2).split())}"
    eager = re.match(r"Expected .* to be true\. Summarized data: b'(.*?)'(?:\n(.*))?$",
                     message, flags=re.S)
    if eager:
        values = " ".join((eager.group(2) or "").replace(",", " ").split())
        return f"{eager.group(1)} [{values}]"
    return message.splitlines()[0] if message else "unreadable"


def files_dataset(paths, record, batch_size=64, contents=None):
    """tf.data batches of model input [b, H, W, C] of files, in order (decoded in parallel)."""
    import numpy as np
    import tensorflow as tf

    if contents is None:
        source = tf.data.Dataset.from_tensor_slices(
            tf.constant(np.asarray([str(p) for p in paths], dtype=object), tf.string))
        source = source.map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        source = tf.data.Dataset.from_tensor_slices(contents)
    images = source.map(file_function(record), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
    return images.batch(batch_size).prefetch(2)


def load_files(paths, record, batch_size=64):
    """float32 [N, H, W, C]: every file through `decode` and `transform`.

    Raises:
        ValueError: naming the first file that cannot be read or decoded.
    """
    import numpy as np
    import tensorflow as tf

    from dnc_keras import progress

    paths = [str(p) for p in paths]
    try:
        with progress.bar(total=len(paths), desc="reading images", unit="img") as bar:
            chunks = []
            for batch in files_dataset(paths, record, batch_size):
                chunks.append(batch.numpy())
                bar.update(len(chunks[-1]))
    except (tf.errors.OpError, UnicodeDecodeError):
        for path in paths:  # find and name the culprit
            try:
                decode_and_transform(tf.io.read_file(path), record)
            except (tf.errors.OpError, UnicodeDecodeError) as error:
                raise ValueError(f"Cannot read image {path}: {error_reason(error)}") from None
        raise
    return np.concatenate(chunks) if chunks else np.zeros((0, *record.shape), np.float32)


def transform_arrays(images, record, batch_size=256):
    """uint8 arrays [N, h, w, C] (one size) -> float32 [N, H, W, C], in batches."""
    import numpy as np

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != record.channels:
        raise ValueError(f"images must be uint8 [N, h, w, {record.channels}]. Received "
                         f"{images.dtype} {images.shape}")
    rows, cols = _geometry_of_size(record, images.shape[1], images.shape[2])
    chunks = [finish(apply_geometry(images[i:i + batch_size], rows, cols, record.rounding),
                     record).numpy()
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, *record.shape), np.float32)


@functools.lru_cache(maxsize=16)
def _geometry_of_size(record, height, width):
    """`geometry` of one concrete input size, built once: loaders transform arrays of one size
    a class at a time, and each eager `geometry` is some 30 small ops (a third of the glyphs'
    loading time when rebuilt per class)."""
    return geometry(record, height, width)
