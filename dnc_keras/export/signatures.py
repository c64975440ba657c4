"""The serving graph: uint8 images or encoded files in, L2-normalised embeddings out.

Both signatures run the run's `Preprocessing` record (`dnc_keras.preprocessing`) inside the
graph, so TF Serving computes exactly what training and evaluation computed:

- `serving_default`: `images`, uint8 [batch, height, width, channels], any height and width
  within the bounds, `channels` the model's: `preprocessing.transform`, then the model.
- `serving_bytes`: `image_bytes`, string [batch] of encoded JPEG or PNG files (TF Serving's
  REST API carries them as {"b64": ...}): `preprocessing.decode` (EXIF orientation,
  transparency, 16-bit, CMYK, as the loaders read files), then the same path.

Both return `embeddings`, float32 [batch, d], L2-normalised.

Batching: the network runs inside a `BatchFunction` (in-graph batching) that concatenates
concurrent requests after each was resized to the model's input size, so requests of different
image sizes batch together. TF Serving's own server-side batching concatenates the raw inputs,
which fails for mixed sizes; keep it off (serving/README.md).

TF Serving does not check input shapes against the signature (only dtypes), so bad input
reaches the graph; the asserts here turn it into an INVALID_ARGUMENT error that names the
problem, and bound what one request may cost (`Bounds`).
"""

import dataclasses

import tensorflow as tf

from dnc_keras import image_header
from dnc_keras import preprocessing as pp
from dnc_keras.image_header import assert_that, bound_constant
from dnc_keras_cli.options import BOUNDS_DEFAULTS

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
IMAGES_KEY = "images"
BYTES_KEY = "image_bytes"
OUTPUT_KEY = "embeddings"
# In-graph batching: a batch closes at the request bound's max_batch images or after this wait.
BATCH_TIMEOUT_MICROS = 2000


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one request may ask of the server: a bound on cost, not a model property.

    Args:
        max_side: largest image height or width. Defaults to `4096`: every camera photo
            passes, a 100-megapixel request does not.
        max_batch: most images per request. Defaults to `128`.
        max_pixels: most pixels per request, summed over its images. Defaults to
            `4032 * 3024` (a 12-megapixel phone photo; 12,192,768 pixels):
            with `max_batch`, chosen so one request costs at most ~2 s of CPU and ~500 MB on a
            2-core machine on every path (docs/reliability.md measures it).
    """

    max_side: int = BOUNDS_DEFAULTS["max_side"]
    max_batch: int = BOUNDS_DEFAULTS["max_batch"]
    max_pixels: int = BOUNDS_DEFAULTS["max_pixels"]

    def __post_init__(self):
        for name in ("max_side", "max_batch", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")

    def to_dict(self):
        return dataclasses.asdict(self)


DEFAULT_BOUNDS = Bounds()
DEFAULT_MAX_SIDE = DEFAULT_BOUNDS.max_side


def images_spec(channels):
    """TensorSpec of the `images` input: uint8 [batch, height, width, channels]."""
    return tf.TensorSpec([None, None, None, channels], tf.uint8, name=IMAGES_KEY)


def bytes_spec():
    """TensorSpec of the `image_bytes` input: a string vector of encoded images."""
    return tf.TensorSpec([None], tf.string, name=BYTES_KEY)


def request_messages(channels, bounds):
    """{check: message} of the request checks, each followed by the request's shape
    `[batch height width channels]`: the graph's asserts (`check_images`) and the numpy checks
    that run before ONNX Runtime, which has no assert op (`dnc_keras.export.loading`), word
    them alike; serving/image_input.py repeats them for the clients (the tests compare)."""
    return {
        # No apostrophe: the graph's assert prints strings C-escaped (\').
        "shape": f"images must be uint8 [batch, height, width, {channels}] ({channels} is the "
                 "channel count of the model); got shape",
        "batch": "images is an empty batch; got shape",
        "max_batch": f"images holds more than the bound of {bounds.max_batch} images per "
                     "request; got shape",
        "empty": "images must have height and width >= 1; got shape",
        "max_side": f"images larger than the serving bound of {bounds.max_side} px per side; "
                    "got shape",
        "max_pixels": f"request larger than the bound of {bounds.max_pixels} pixels; got shape",
    }


def check_images(images, channels, bounds):
    """Asserts a uint8 [batch, h, w, channels] within `bounds`; returns it gated on the checks.

    The signature declares rank 4 and the channel count, and TensorFlow (Grappler, at serving
    time) folds checks that the declared shape decides into constants. So the checks read the
    shape through `placeholder_with_default(shape=None)` and compare the element count with
    the product of the first four dimensions: an input of any rank that is not
    [batch, h, w, channels] fails the shape check whether or not the rank test was folded.
    The bounds are named constants (`image_header.bound_constant`), which `graph_bounds` reads
    back out of the saved graph.
    """
    dynamic = tf.compat.v1.placeholder_with_default(images, shape=None)
    actual = tf.shape(dynamic, out_type=tf.int64)
    # Padding keeps the slicing valid for inputs of rank < 4; such inputs then fail the
    # element-count test because a padded dimension is 0.
    shape = tf.concat([actual, tf.zeros([4], tf.int64)], 0)[:4]
    batch, height, width, depth = shape[0], shape[1], shape[2], shape[3]
    is_image_batch = tf.logical_and(
        tf.logical_and(tf.equal(tf.rank(dynamic), 4), tf.equal(depth, channels)),
        tf.equal(tf.size(dynamic, out_type=tf.int64), tf.reduce_prod(shape)))
    max_side = bound_constant("max_side", bounds.max_side)
    message = request_messages(channels, bounds)
    checks = [
        assert_that(tf.logical_or(is_image_batch, tf.equal(tf.size(dynamic), 0)),
                    message["shape"], actual, name="check_shape"),
        assert_that(batch > 0, message["batch"], actual, name="check_batch"),
        assert_that(batch <= bound_constant("max_batch", bounds.max_batch),
                    message["max_batch"], actual, name="check_max_batch"),
        assert_that(tf.logical_and(height > 0, width > 0), message["empty"], actual,
                    name="check_empty"),
        assert_that(tf.logical_and(height <= max_side, width <= max_side),
                    message["max_side"], actual, name="check_max_side"),
        assert_that(batch * height * width <= bound_constant("max_pixels", bounds.max_pixels),
                    message["max_pixels"], actual, name="check_max_pixels"),
    ]
    with tf.control_dependencies(checks):
        checked = tf.reshape(images, tf.cast(shape, tf.int32))
    checked.set_shape(images.shape)
    return checked


def check_bytes(image_bytes, bounds):
    """Asserts a non-empty string vector [batch] within the batch bound; returns it gated on
    the checks (the same folding-proof way as `check_images`)."""
    dynamic = tf.compat.v1.placeholder_with_default(image_bytes, shape=None)
    actual = tf.shape(dynamic, out_type=tf.int64)
    count = tf.concat([actual, [0]], 0)[0]
    is_vector = tf.logical_and(tf.equal(tf.rank(dynamic), 1),
                               tf.equal(tf.size(dynamic, out_type=tf.int64), count))
    checks = [
        assert_that(tf.logical_or(is_vector, tf.equal(tf.size(dynamic), 0)),
                    "image_bytes must be a string vector [batch] of encoded JPEG/PNG files; got "
                    "shape", actual, name="check_bytes_shape"),
        assert_that(count > 0, "image_bytes is an empty batch; got shape", actual,
                    name="check_bytes_batch"),
        assert_that(count <= bound_constant("max_batch", bounds.max_batch),
                    f"image_bytes holds more than the bound of {bounds.max_batch} images per "
                    "request; got shape", actual, name="check_bytes_max_batch"),
    ]
    with tf.control_dependencies(checks):
        checked = tf.reshape(image_bytes, [-1])
    checked.set_shape(image_bytes.shape)
    return checked


def check_encoded(encoded, bounds):
    """Asserts one JPEG or PNG file within the bounds, read from its header before decoding
    (a 140 KB file can declare 12,000 x 12,000 pixels); returns its declared
    (height, width, pixels)."""
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(pp.PNG_MAGIC)), pp.PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(pp.JPEG_MAGIC)), pp.JPEG_MAGIC)
    format_ok = assert_that(
        tf.logical_or(is_png, is_jpeg), "image_bytes holds something that is not a JPEG or "
        "PNG file; its first bytes are",
        tf.io.decode_raw(tf.strings.substr(encoded, 0, 8), tf.uint8), name="check_served_format")
    with tf.control_dependencies([format_ok]):
        return image_header.check_size(encoded, bounds.max_side, bounds.max_pixels)


def graph_bounds(saved_model_dir):
    """{bound: value} the SavedModel's graphs enforce, read from their named constants
    (`image_header.bound_constant`) in saved_model.pb, without loading the model.

    Raises:
        ValueError: a bound is missing, or two of its constants disagree.
    """
    import os

    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # protobuf's DecodeError: a damaged file
        raise ValueError(f"{path} is not a SavedModel ({error})") from None
    found = {}
    for graph in proto.meta_graphs:
        functions = list(graph.graph_def.library.function)
        nodes = [n for f in functions for n in f.node_def] + list(graph.graph_def.node)
        for node in nodes:
            name = node.name.rsplit("/", 1)[-1]
            if node.op == "Const" and name.startswith("bound_"):
                bound = name[len("bound_"):].rstrip("_0123456789") or name
                tensor = node.attr["value"].tensor
                found.setdefault(bound, set()).update(tensor.int64_val)
    missing = [b for b in image_header.BOUND_NAMES if not found.get(b)]
    if missing:
        raise ValueError(f"{path} holds no bound constant for {', '.join(missing)}: exported "
                         "by an older dnc_keras? Export it again")
    mixed = {b: sorted(v) for b, v in found.items() if len(v) > 1}
    if mixed:
        raise ValueError(f"{path} enforces more than one value of a bound: {mixed}")
    return {b: found[b].pop() for b in image_header.BOUND_NAMES}


def batched(embed, input_shape, max_batch_size):
    """`embed` inside an in-graph `BatchFunction`: concurrent calls share one run.

    A batch closes at `max_batch_size` images (the request bound: the op refuses a single call
    larger than that) or after `BATCH_TIMEOUT_MICROS`.
    """
    @tf.nondifferentiable_batch_function(num_batch_threads=1, max_batch_size=max_batch_size,
                                         batch_timeout_micros=BATCH_TIMEOUT_MICROS,
                                         max_enqueued_batches=100)
    def run(images):
        return tf.cast(embed(images), tf.float32)

    # The batch op forgets static shapes; the signature needs [batch, d].
    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    dim = tf.function(lambda x: tf.cast(embed(x), tf.float32)).get_concrete_function(
        spec).structured_outputs.shape[-1]

    def call(images):
        out = run(images)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return tf.ensure_shape(out, [None, dim])

    return call


def images_function(embed, record, bounds=DEFAULT_BOUNDS, checks=True, batching=True):
    """The `serving_default` computation: uint8 images -> {"embeddings": [batch, d]}.

    Args:
        embed: callable float32 [batch, H, W, C] in [0, 1] -> L2-normalised [batch, d]
            (a `DnCModel`).
        record: the run's `Preprocessing`.
        bounds: `Bounds` of a request. Defaults to `DEFAULT_BOUNDS`.
        checks: keep the input asserts. The ONNX export turns them off (ONNX has no assert
            op; `ExportedModel` and the edge script check before running). Defaults to `True`.
        batching: run the network in an in-graph `BatchFunction` (SavedModel; ONNX has
            none). Defaults to `True`.
    """
    network = batched(embed, record.shape, bounds.max_batch) if batching else embed

    def serve(images):
        if checks:
            images = check_images(images, record.channels, bounds)
        return {OUTPUT_KEY: tf.cast(network(pp.transform(images, record)), tf.float32)}

    return serve


def bytes_function(embed, record, bounds=DEFAULT_BOUNDS):
    """The `serving_bytes` computation: encoded JPEG/PNG strings -> {"embeddings": ...}.

    Every file is checked from its header, decoded and resized on its own, so a batch may mix
    sizes and formats.
    """
    network = batched(embed, record.shape, bounds.max_batch)

    def serve(image_bytes):
        image_bytes = check_bytes(image_bytes, bounds)
        sizes = tf.map_fn(lambda encoded: check_encoded(encoded, bounds), image_bytes,
                          fn_output_signature=tf.TensorSpec([3], tf.int64))
        total = tf.reduce_sum(sizes[:, 2])
        total_ok = assert_that(total <= bound_constant("max_pixels", bounds.max_pixels),
                               f"request larger than the bound of {bounds.max_pixels} pixels; "
                               "the pixels its files declare", total,
                               name="check_encoded_pixels")
        with tf.control_dependencies([total_ok]):
            image_bytes = tf.identity(image_bytes)
        # One file at a time (map_fn's graph default is 10 at once): a request's memory is
        # then that of its largest file, not of ten of them.
        images = tf.map_fn(lambda encoded: pp.decode_and_transform(
                               encoded, record, bounds.max_side, bounds.max_pixels),
                           image_bytes, parallel_iterations=1,
                           fn_output_signature=tf.TensorSpec(record.shape, tf.float32))
        return {OUTPUT_KEY: tf.cast(network(images), tf.float32)}

    return serve
