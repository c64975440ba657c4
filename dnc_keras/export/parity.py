"""Parity: the exported graphs compute what the run's own evaluation computed, on real inputs.

The reference is the run's evaluation path: the Keras model on `preprocessing.decode` and
`transform` of each file. The same encoded files go through the SavedModel's `serving_bytes`,
and their decoded pixels through `serving_default` and ONNX Runtime, one image at a time and
in batches of one size. The inputs are the run's own sources (Omniglot's 105x105 drawings, a
folder's photos) plus variants made from a few of them at sizes where resizing is not trivial:
rescaled by odd factors and saved as JPEG, given an alpha channel, stored with an EXIF
rotation. Integer upscales, where bilinear resizing is exact, would hide a wrong resize.
"""

from __future__ import annotations

import io

import numpy as np

from dnc_keras import preprocessing as pp
from dnc_keras import progress
from dnc_keras.export import signatures as sig

# The one tolerance of every parity check: max |difference| of L2-normalised embeddings.
PARITY_TOLERANCE = 1e-4
# Sources checked (and a few of them turned into variants).
PARITY_SOURCES = 24
VARIANT_SOURCES = 3
_ODD_SCALES = (1.37, 0.61, 2.9)


def encode(image, fmt="PNG", **options):
    """uint8 [h, w, 1 or 3 or 4] -> encoded bytes (Pillow)."""
    from PIL import Image

    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _variants(pixels, name, seed):
    """Encoded variants of one decoded source at sizes and in encodings users send."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    image = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    out = []
    for scale in _ODD_SCALES:
        size = (max(3, round(w * scale)), max(3, round(h * scale * 0.93)))  # aspect changes too
        scaled = image.resize(size, Image.Resampling.BICUBIC)
        out.append((f"{name} x{scale} jpeg", encode(np.asarray(scaled), "JPEG", quality=87)))
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    out.append((f"{name} rgba png", encode(np.concatenate([rgb, alpha], -1), "PNG")))
    exif = Image.Exif()
    exif[0x0112] = 6
    out.append((f"{name} exif-rotated jpeg", encode(rgb, "JPEG", quality=92,
                                                    exif=exif.tobytes())))
    return out


def parity_inputs(sources, record, count=PARITY_SOURCES, variants=VARIANT_SOURCES, seed=0):
    """[(name, encoded bytes)]: up to `count` sources as the run read them (files' own bytes,
    renderings PNG-encoded), then variants of the first `variants` of them."""
    import tensorflow as tf

    from dnc_keras.datasets.sources import read_source

    inputs = []
    for i, source in enumerate(list(sources)[:count]):
        data = read_source(source)
        name = f"source {i}" if data is None else str(source)
        inputs.append((name, encode(source) if data is None else data))
    decode = pp.decode_function(record)
    for k, (name, data) in enumerate(inputs[:variants]):
        pixels = decode(tf.constant(data)).numpy()
        inputs += _variants(pixels, name, seed + k)
    return inputs


def run_reference(model, record, inputs):
    """float32 [n, d]: the run's own evaluation path on each encoded input."""
    import tensorflow as tf

    fn = pp.file_function(record)
    images = np.stack([fn(tf.constant(data)).numpy() for _, data in inputs])
    return model.embed(images)


def check_parity(model, record, saved_model_dir, onnx_path, inputs,
                 tolerance=PARITY_TOLERANCE):
    """Max |difference| of embeddings against the run's evaluation path, per route.

    Returns:
        dict: `inputs` (count and names), `max_abs_diff` per route, `tolerance`, `passed`.
    """
    import tensorflow as tf

    from dnc_keras.export import onnx

    reference = run_reference(model, record, inputs)
    loaded = tf.saved_model.load(saved_model_dir)
    by_pixels = loaded.signatures[sig.DEFAULT_SIGNATURE]
    by_bytes = loaded.signatures[sig.BYTES_SIGNATURE]
    session = onnx.session(onnx_path)
    decode = pp.decode_function(record)
    pixels = [decode(tf.constant(data)).numpy() for _, data in inputs]
    served = [i for i, (_, data) in enumerate(inputs)
              if data.startswith((pp.PNG_MAGIC, pp.JPEG_MAGIC))]

    def savedmodel(batch):
        return by_pixels(**{sig.IMAGES_KEY: tf.constant(batch)})[sig.OUTPUT_KEY].numpy()

    # One run per input and route, each a separate call: a bar on a terminal.
    bar = progress.bar(total=1 + 2 * len(pixels) + 2, desc="export parity checks", unit="run")

    def worst(outputs, rows):
        bar.update()
        return float(np.abs(outputs - reference[rows]).max())

    diffs = {
        "savedmodel serving_bytes": worst(by_bytes(**{sig.BYTES_KEY: tf.constant(
            [inputs[i][1] for i in served])})[sig.OUTPUT_KEY].numpy(), served),
        "savedmodel serving_default, one image": max(
            worst(savedmodel(p[None]), [i]) for i, p in enumerate(pixels)),
        "onnxruntime, one image": max(
            worst(onnx.run(session, p[None]), [i]) for i, p in enumerate(pixels)),
    }
    groups = {}
    for i, p in enumerate(pixels):
        groups.setdefault(p.shape, []).append(i)
    batch = max(groups.values(), key=len)
    if len(batch) > 1:
        stacked = np.stack([pixels[i] for i in batch])
        diffs[f"savedmodel serving_default, batch of {len(batch)}"] = worst(
            savedmodel(stacked), batch)
        diffs[f"onnxruntime, batch of {len(batch)}"] = worst(onnx.run(session, stacked), batch)
    bar.close()
    sizes = sorted({f"{p.shape[0]}x{p.shape[1]}" for p in pixels})
    return {"inputs": len(inputs), "sizes": sizes, "names": [n for n, _ in inputs],
            "reference": "the run's evaluation path: Keras model on preprocessing.decode and "
                         "transform", "max_abs_diff": diffs, "tolerance": tolerance,
            "passed": max(diffs.values()) <= tolerance}
