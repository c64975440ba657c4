"""What an encoded image declares in its header, read in the graph before anything is decoded.

A 140 KB PNG can declare 12,000 x 12,000 pixels: decoding it allocates hundreds of megabytes
before any check on the decoded array could run. So every decoder of this package
(`dnc_keras.preprocessing.decode`, which the loaders, evaluation, both SavedModel signatures
and `ExportedModel` use) first reads the declared height and width from the header bytes and
refuses a file beyond the limits, naming the declared size. `serving/image_input.py` does the
same in plain Python for Pillow; the tests compare the two on every encoding. The asserts and
the named bound constants here are the serving graph's too (`dnc_keras.export.signatures`).

The formats are the four that the record decodes: PNG (IHDR), JPEG (the SOF segment, through
`tf.image.extract_jpeg_shape`, which reads markers only), GIF (the logical screen) and BMP
(the DIB header). Anything else is refused: TensorFlow would decode WebP too, unchecked and
unlike the Pillow twin.
"""

from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
BMP_MAGIC = b"BM"
FORMATS = "PNG, JPEG, GIF or BMP"
# Bytes a header needs: PNG signature + IHDR chunk, GIF screen descriptor, BMP width/height.
_PNG_HEADER, _GIF_HEADER, _BMP_HEADER = 33, 10, 26


def size_message(max_side, max_pixels):
    """The refusal, up to the declared `[height width pixels]` that follows it: one wording for the
    graph's assert and the Pillow twin's error."""
    return (f"refused before decoding: an image must have sides in [1, {max_side}] and at most "
            f"{max_pixels} pixels; its header declares height, width, pixels")


FORMAT_MESSAGE = f"not a {FORMATS} file; its first bytes are"
TRUNCATED_MESSAGE = "truncated image file: shorter than its header; its length in bytes is"
# Name of the constant holding each bound inside a graph: `bound_constant` makes them, and
# `dnc_keras.export.signatures.graph_bounds` reads them back out of a SavedModel.
BOUND_NAMES = ("max_side", "max_batch", "max_pixels")


def bound_constant(name, value):
    """int64 constant `bound_<name>` holding a bound, so that the bounds a graph enforces can
    be read out of the saved graph and compared with the manifest's copy."""
    import tensorflow as tf

    if name not in BOUND_NAMES:
        raise ValueError(f"bound must be one of {BOUND_NAMES}. Received: {name!r}")
    return tf.constant(int(value), tf.int64, name=f"bound_{name}")


def assert_that(condition, message, *values, name):
    """tf.debugging.Assert printing `message` and then `values` (up to 8 entries each).

    `dnc_keras.preprocessing.error_reason` turns what it raises, in a graph or eagerly, into
    one line "message [v1 v2 ...]", the form the numpy and Pillow checks write too.
    """
    import tensorflow as tf

    return tf.debugging.Assert(condition, [message, *values], summarize=8, name=name)


def _uint(data, start, width, little):
    """Unsigned int of bytes data[start:start + width] (uint8 tensor) as int64."""
    import tensorflow as tf

    value = tf.constant(0, tf.int64)
    for k in range(width):
        shift = 8 * k if little else 8 * (width - 1 - k)
        value += tf.bitwise.left_shift(tf.cast(data[start + k], tf.int64), shift)
    return value


def declared_size(contents):
    """int64 [3]: (height, width, pixels) a PNG, JPEG, GIF or BMP file declares, decoding
    nothing. `pixels` is height x width, except for a GIF: every frame's area, since
    TensorFlow's GIF reader decodes every frame (and a frame may overflow the declared
    screen, which then grows).

    Raises (when run) InvalidArgumentError naming the problem for another format or a header
    cut short.
    """
    import tensorflow as tf

    head = tf.io.decode_raw(tf.strings.substr(contents, 0, 32), tf.uint8)
    length = tf.strings.length(contents)
    # Padded so that every read below is in range; short files are refused first.
    data = tf.concat([head, tf.zeros([32], tf.uint8)], 0)
    starts = {name: tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)
              for name, magic in (("png", PNG_MAGIC), ("jpeg", JPEG_MAGIC), ("bmp", BMP_MAGIC))}
    starts["gif"] = tf.logical_or(*(tf.equal(tf.strings.substr(contents, 0, 6), magic)
                                    for magic in GIF_MAGICS))
    known = tf.reduce_any(tf.stack(list(starts.values())))
    complete = tf.logical_not(
        (starts["png"] & (length < _PNG_HEADER)) | (starts["gif"] & (length < _GIF_HEADER))
        | (starts["bmp"] & (length < _BMP_HEADER)))
    checks = [
        # Raw bytes in the message would make it invalid UTF-8 for gRPC and Python: print
        # them as numbers.
        assert_that(known, FORMAT_MESSAGE,
                    tf.io.decode_raw(tf.strings.substr(contents, 0, 8), tf.uint8),
                    name="check_format"),
        assert_that(complete, TRUNCATED_MESSAGE, length, name="check_header"),
    ]

    def with_pixels(height, width):
        return tf.stack([height, width, height * width])

    def png():
        return with_pixels(_uint(data, 20, 4, False), _uint(data, 16, 4, False))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return with_pixels(shape[0], shape[1])

    def bmp():
        core = tf.equal(_uint(data, 14, 4, True), 12)  # OS/2 BITMAPCOREHEADER: 16-bit sizes

        def signed(value):  # int32 two's complement; a negative height means top-down rows
            return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

        return with_pixels(tf.where(core, _uint(data, 20, 2, True), signed(_uint(data, 22, 4, True))),
                           tf.where(core, _uint(data, 18, 2, True), signed(_uint(data, 18, 4, True))))

    with tf.control_dependencies(checks):
        return tf.case([(starts["png"], png), (starts["jpeg"], jpeg),
                        (starts["gif"], lambda: _gif_size(contents))],
                       default=bmp, exclusive=False)


def _gif_size(contents):
    """(height, width, pixels) of a GIF: its screen grown to every frame's extent, and the
    frames' total area, found by walking the blocks (extensions and image data are chains of
    sub-blocks of at most 255 bytes, so the walk takes about size / 256 steps)."""
    import tensorflow as tf

    raw = tf.io.decode_raw(contents, tf.uint8)
    size = tf.size(raw, out_type=tf.int64)
    raw = tf.concat([raw, tf.zeros([16], tf.uint8)], 0)

    def byte(at):
        return tf.cast(tf.gather(raw, tf.minimum(tf.cast(at, tf.int64), size)), tf.int64)

    def u16(at):
        return byte(at) + 256 * byte(at + 1)

    def table(packed):  # bytes of the colour table a packed field announces
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), tf.bitwise.bitwise_and(packed, 7)), 0)

    def step(at, in_blocks, height, width, pixels, done):
        b = byte(at)
        # Inside a chain of sub-blocks: a length byte, 0 ends the chain.
        sub_at = tf.where(tf.equal(b, 0), at + 1, at + b + 1)
        frame = tf.equal(b, 0x2C)  # image descriptor: left, top, width, height, packed
        left, top, w, h = u16(at + 1), u16(at + 3), u16(at + 5), u16(at + 7)
        frame_at = at + 10 + table(byte(at + 9)) + 1  # + LZW minimum code size
        block_at = tf.where(tf.equal(b, 0x21), at + 2, frame_at)  # extension: introducer, label
        in_frame = tf.logical_and(tf.logical_not(in_blocks), frame)
        return (tf.where(in_blocks, sub_at, block_at),
                tf.logical_or(tf.logical_and(in_blocks, tf.not_equal(b, 0)),
                              tf.logical_and(tf.logical_not(in_blocks),
                                             tf.logical_or(frame, tf.equal(b, 0x21)))),
                tf.where(in_frame, tf.maximum(height, top + h), height),
                tf.where(in_frame, tf.maximum(width, left + w), width),
                tf.where(in_frame, pixels + w * h, pixels),
                # The trailer (0x3B), or anything but a block, ends the walk.
                tf.logical_and(tf.logical_not(in_blocks),
                               tf.logical_not(tf.logical_or(frame, tf.equal(b, 0x21)))))

    start = 13 + table(byte(10))
    _, _, height, width, pixels, _ = tf.while_loop(
        lambda at, in_blocks, height, width, pixels, done: tf.logical_and(
            tf.logical_not(done), at < size),
        step, (start, tf.constant(False), u16(8), u16(6), tf.constant(0, tf.int64),
               tf.constant(False)))
    return tf.stack([height, width, tf.maximum(pixels, height * width)])


def check_size(contents, max_side, max_pixels):
    """int64 [3]: the declared (height, width, pixels), asserted within `max_side` per side and
    `max_pixels` in all, before any pixel is decoded."""
    import tensorflow as tf

    size = declared_size(contents)
    side = bound_constant("max_side", max_side)
    pixels = bound_constant("max_pixels", max_pixels)
    ok = tf.logical_and(tf.reduce_all(size[:2] >= 1), tf.reduce_all(size[:2] <= side))
    ok = tf.logical_and(ok, size[2] <= pixels)
    with tf.control_dependencies([assert_that(ok, size_message(max_side, max_pixels), size,
                                              name="check_declared_size")]):
        return tf.identity(size)
