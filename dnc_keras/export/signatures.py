"""The serving graph: uint8 images or encoded JPEG/PNG bytes in, L2-normalised embeddings out.

Everything a deployed model needs besides its weights lives in these functions, so TF Serving,
ONNX Runtime and the Python API all see one input contract:

- `serving_default`: `images`, uint8 [batch, height, width, channels], any height and width up
  to `max_side`, `channels` the model's. Resized inside the graph with plain bilinear
  interpolation (antialias off: tf2onnx 1.17 cannot convert the antialiased kernel,
  ScaleAndTranslate, while plain bilinear lowers to ONNX Resize and matches TensorFlow), then
  scaled to [0, 1], the range the encoder was trained on.
- `serving_bytes`: `image_bytes`, string [batch] of encoded JPEG or PNG files (TF Serving's
  REST API carries them as {"b64": ...}; the `_bytes` suffix is what Google's hosted
  prediction expects for base64 inputs). Each image is decoded to the model's channel count
  and then follows the same path.

Both return `embeddings`, float32 [batch, d], L2-normalised.

TF Serving does not check input shapes against the signature (only dtypes), so bad input
reaches the graph; the `tf.debugging.Assert`s here turn it into an INVALID_ARGUMENT error that
names the problem instead of a failure deep inside a convolution.
"""

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
IMAGES_KEY = "images"
BYTES_KEY = "image_bytes"
OUTPUT_KEY = "embeddings"
# A bound, not a model property: 4096 px per side admits every camera photo we expect while a
# single request can no longer ask the server to decode and resize a 100-megapixel image.
DEFAULT_MAX_SIDE = 4096

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def images_spec(channels):
    """TensorSpec of the `images` input: uint8 [batch, height, width, channels]."""
    return tf.TensorSpec([None, None, None, channels], tf.uint8, name=IMAGES_KEY)


def bytes_spec():
    """TensorSpec of the `image_bytes` input: a string vector of encoded images."""
    return tf.TensorSpec([None], tf.string, name=BYTES_KEY)


def check_images(images, channels, max_side):
    """Asserts that `images` is a non-empty uint8 [batch, h, w, channels] with sides in
    [1, max_side]; returns it, reshaped to rank 4 and gated on the checks.

    The signature declares rank 4 and the channel count, and TensorFlow (Grappler, at serving
    time) folds checks that the declared shape decides into constants. So the checks read the
    shape through `placeholder_with_default(shape=None)` and compare the element count with
    the product of the first four dimensions: an input of any rank that is not
    [batch, h, w, channels] fails the shape check whether or not the rank test was folded.
    """
    dynamic = tf.compat.v1.placeholder_with_default(images, shape=None)
    actual = tf.shape(dynamic, out_type=tf.int64)
    # Padding keeps the slicing valid for inputs of rank < 4; such inputs then fail the
    # element-count test because a padded dimension is 0.
    shape = tf.concat([actual, tf.zeros([4], tf.int64)], 0)[:4]
    batch, height, width, depth = shape[0], shape[1], shape[2], shape[3]
    expected = f"images must be uint8 [batch, height, width, {channels}]"
    is_image_batch = tf.logical_and(
        tf.logical_and(tf.equal(tf.rank(dynamic), 4), tf.equal(depth, channels)),
        tf.equal(tf.size(dynamic, out_type=tf.int64), tf.reduce_prod(shape)))
    shape_ok = tf.debugging.Assert(
        tf.logical_or(is_image_batch, tf.equal(tf.size(dynamic), 0)),
        [f"{expected} ({channels} is the model's channel count); got shape", actual],
        summarize=8, name="check_shape")
    checks = [
        shape_ok,
        tf.debugging.Assert(batch > 0, ["images is an empty batch; got shape", actual],
                            summarize=8, name="check_batch"),
        tf.debugging.Assert(
            tf.logical_and(height > 0, width > 0),
            ["images must have height and width >= 1; got shape", actual], summarize=8,
            name="check_empty"),
        tf.debugging.Assert(
            tf.logical_and(height <= max_side, width <= max_side),
            [f"images larger than the serving bound of {max_side} px per side; got shape",
             actual], summarize=8, name="check_max_side"),
    ]
    with tf.control_dependencies(checks):
        checked = tf.reshape(images, tf.cast(shape, tf.int32))
    checked.set_shape(images.shape)
    return checked


def preprocess(images, height, width, invert=False):
    """uint8 [batch, h, w, c] -> float32 [batch, height, width, c] in [0, 1] (plain bilinear).

    Args:
        invert: return 1 - x, for models trained on inverted images (Omniglot's loader draws
            strokes bright on black). Defaults to `False`.
    """
    resized = tf.image.resize(tf.cast(images, tf.float32), (height, width), method="bilinear",
                              antialias=False)
    scaled = resized / 255.0
    return 1.0 - scaled if invert else scaled


def check_bytes(image_bytes):
    """Asserts a non-empty string vector [batch]; returns it gated on the checks (the same
    folding-proof way as `check_images`)."""
    dynamic = tf.compat.v1.placeholder_with_default(image_bytes, shape=None)
    actual = tf.shape(dynamic, out_type=tf.int64)
    count = tf.concat([actual, [0]], 0)[0]
    is_vector = tf.logical_and(tf.equal(tf.rank(dynamic), 1),
                               tf.equal(tf.size(dynamic, out_type=tf.int64), count))
    checks = [
        tf.debugging.Assert(
            tf.logical_or(is_vector, tf.equal(tf.size(dynamic), 0)),
            ["image_bytes must be a string vector [batch] of encoded JPEG/PNG files; got shape",
             actual], summarize=8, name="check_bytes_shape"),
        tf.debugging.Assert(count > 0, ["image_bytes is an empty batch; got shape", actual],
                            summarize=8, name="check_bytes_batch"),
    ]
    with tf.control_dependencies(checks):
        checked = tf.reshape(image_bytes, [-1])
    checked.set_shape(image_bytes.shape)
    return checked


def decode_image(encoded, channels, max_side):
    """One JPEG or PNG file -> uint8 [h, w, channels], with format and size asserts."""
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    length = tf.strings.length(encoded)
    format_ok = tf.debugging.Assert(
        tf.logical_or(is_png, is_jpeg),
        # Raw bytes in the message would make it invalid UTF-8 for gRPC and Python: print
        # them as numbers.
        ["image_bytes holds something that is not a JPEG or PNG file; its first bytes are",
         tf.io.decode_raw(tf.strings.substr(encoded, 0, 8), tf.uint8)], summarize=8,
        name="check_format")
    # Everything after the 33-byte signature + IHDR chunk is checked by the decoder
    # ("Invalid PNG data" / "Invalid JPEG data" for truncated or damaged files).
    header_ok = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_png), length >= 33),
        ["image_bytes holds a truncated PNG file of", length, "bytes"], name="check_png_header")
    format_ok = tf.group(format_ok, header_ok)
    with tf.control_dependencies([format_ok]):
        size = tf.cond(is_png, lambda: _png_size(encoded),
                       lambda: tf.image.extract_jpeg_shape(encoded)[:2])
    size_ok = tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(size <= max_side), tf.reduce_all(size > 0)),
        [f"encoded image must have sides in [1, {max_side}] (the serving bound); got "
         "height, width", size], summarize=2, name="check_encoded_size")
    with tf.control_dependencies([size_ok]):
        image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    return to_channels(image, channels)


def to_channels(image, channels):
    """uint8 [h, w, c0] with c0 in 1..4 -> [h, w, channels] the way Pillow's `convert` does it.

    The datasets read files with Pillow (`convert("L")` or `convert("RGB")`, alpha dropped), so
    the serving graph converts the same way: colour to grey with Pillow's integer ITU-R 601
    weights (libpng's own rgb-to-grey uses other weights), grey to colour by repetition.
    """
    if channels not in (1, 3):
        raise ValueError(f"Encoded-image input supports models with 1 or 3 channels. "
                         f"Received: channels={channels}")
    depth = tf.shape(image)[2]
    rgb = tf.cond(depth >= 3, lambda: image[:, :, :3], lambda: tf.tile(image[:, :, :1], [1, 1, 3]))
    if channels == 3:
        rgb.set_shape([None, None, 3])
        return rgb
    # Pillow: L = (19595 R + 38470 G + 7471 B + 2**15) >> 16; exact for grey input.
    weights = tf.constant([19595, 38470, 7471], tf.int32)
    luma = tf.reduce_sum(tf.cast(rgb, tf.int32) * weights, axis=-1, keepdims=True)
    grey = tf.cast(tf.bitwise.right_shift(luma + 2 ** 15, 16), tf.uint8)
    grey.set_shape([None, None, 1])
    return grey


def _png_size(encoded):
    """(height, width) from the PNG IHDR chunk: big-endian uint32 width at 16, height at 20."""
    header = tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.uint8)
    header = tf.cast(header, tf.int32)
    width = header[0] * 2 ** 24 + header[1] * 2 ** 16 + header[2] * 2 ** 8 + header[3]
    height = header[4] * 2 ** 24 + header[5] * 2 ** 16 + header[6] * 2 ** 8 + header[7]
    return tf.stack([height, width])


def images_function(embed, input_shape, max_side=DEFAULT_MAX_SIDE, invert=False, checks=True):
    """The `serving_default` computation: uint8 images -> {"embeddings": [batch, d]}.

    Args:
        embed: callable float32 [batch, H, W, C] in [0, 1] -> L2-normalised [batch, d]
            (a `DnCModel`).
        input_shape: the encoder's (H, W, C).
        max_side: largest accepted height or width. Defaults to `DEFAULT_MAX_SIDE`.
        invert: feed 1 - x to the model (see `preprocess`). Defaults to `False`.
        checks: keep the input asserts. ONNX export turns them off (ONNX has no assert op;
            ONNX Runtime checks dtype, rank and channels against the declared input, and the
            edge script checks the rest before running). Defaults to `True`.
    """
    height, width, channels = (int(s) for s in input_shape)

    def serve(images):
        if checks:
            images = check_images(images, channels, max_side)
        embeddings = embed(preprocess(images, height, width, invert))
        return {OUTPUT_KEY: tf.cast(embeddings, tf.float32)}

    return serve


def bytes_function(embed, input_shape, max_side=DEFAULT_MAX_SIDE, invert=False):
    """The `serving_bytes` computation: encoded JPEG/PNG strings -> {"embeddings": ...}.

    Every image is decoded to the model's channel count and resized on its own, so a batch
    may mix sizes and formats.
    """
    height, width, channels = (int(s) for s in input_shape)

    def serve(image_bytes):
        image_bytes = check_bytes(image_bytes)

        def one(encoded):
            image = decode_image(encoded, channels, max_side)
            return preprocess(image[None], height, width, invert)[0]

        images = tf.map_fn(one, image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, channels],
                                                             tf.float32))
        return {OUTPUT_KEY: tf.cast(embed(images), tf.float32)}

    return serve
