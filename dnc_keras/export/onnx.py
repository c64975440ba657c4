"""ONNX export of the serving graph (tf2onnx from_function) and its edge variants.

tf2onnx's `from_keras` does not handle Keras 3 models, so the ONNX model is converted from the
same `tf.function` that serves `serving_default` (uint8 images [batch, height, width, C], any
batch, height and width, the run's `Preprocessing` inside: its resize is two matrix products,
which convert), minus the asserts and the in-graph batching, which ONNX cannot express: ONNX
Runtime checks dtype, rank and channel count against the declared input, and `ExportedModel`
and `serving/edge_infer.py` check the rest before running.
"""

import json
import os

import numpy as np
import tensorflow as tf

from dnc_keras.export import signatures as sig
from dnc_keras_cli.options import QUANTIZE_MODES

DEFAULT_OPSET = 17
METADATA_PREFIX = "dnc_keras."
# Symbolic names shown by Netron and onnxruntime instead of tf2onnx's "unk__N".
_INPUT_DIMS = ("batch", "height", "width")


def export_onnx(model, path, record, bounds=sig.DEFAULT_BOUNDS, opset=DEFAULT_OPSET):
    """Converts `model`'s serving graph to ONNX at `path` and checks it with onnx.checker.

    Args:
        model: a `DnCModel` (or any callable float32 images in [0, 1] -> embeddings).
        path: the .onnx file to write.
        record: the run's `Preprocessing`, baked into the graph and written, with `bounds`,
            into the file's metadata (`read_metadata`), so that a runtime holding only the
            .onnx file decodes and bounds its inputs as the export intends.
        bounds: `signatures.Bounds` of a request. Defaults to `signatures.DEFAULT_BOUNDS`.
        opset: ONNX opset. Defaults to `17`.

    Returns:
        The `onnx.ModelProto` written.
    """
    import onnx
    import tf2onnx

    # Traced as Keras traces the SavedModel's endpoints: without autograph (plain ops).
    serve = tf.function(sig.images_function(model, record, checks=False, batching=False),
                        autograph=False)
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=[sig.images_spec(record.channels)], opset=opset)
    _name_dynamic_dims(proto)
    proto.doc_string = ("dnc_keras embedding: uint8 images [batch, height, width, channels] -> "
                        "L2-normalised float32 embeddings [batch, d]")
    for key, value in (("preprocessing", record.to_dict()), ("bounds", bounds.to_dict())):
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    onnx.save(proto, path)
    check_onnx(path)
    return proto


def read_metadata(path):
    """{"preprocessing": dict, "bounds": dict} stored in an exported ONNX file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {entry.key[len(METADATA_PREFIX):]: json.loads(entry.value)
            for entry in model.metadata_props if entry.key.startswith(METADATA_PREFIX)}


def check_onnx(path):
    """onnx.checker (full check, shape inference included) on the file; raises on failure."""
    import onnx

    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [sig.IMAGES_KEY] or outputs != [sig.OUTPUT_KEY]:
        raise RuntimeError(f"{path}: expected input {sig.IMAGES_KEY!r} and output "
                           f"{sig.OUTPUT_KEY!r}; found inputs {inputs}, outputs {outputs}")


def _name_dynamic_dims(proto):
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, _INPUT_DIMS):
        dim.dim_param = name
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"


# Execution providers in order of preference, where the installed onnxruntime offers them.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def providers(available=None):
    """The preferred providers among `available` (default: what onnxruntime offers)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    return chosen or ["CPUExecutionProvider"]


def session(path, threads=None):
    """An onnxruntime InferenceSession of the file, on CUDA when onnxruntime offers it.

    Args:
        threads: intra-op threads. Defaults to `None` (onnxruntime's choice).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, options, providers=providers())


def run(sess, images):
    """Embeddings [batch, d] of uint8 images [batch, h, w, C] with an onnxruntime session."""
    return sess.run([sig.OUTPUT_KEY], {sig.IMAGES_KEY: np.ascontiguousarray(images)})[0]


def quantize(src, dst, mode):
    """Writes an edge variant of the ONNX model at `src` to `dst`.

    Args:
        mode: `"int8"`: onnxruntime dynamic quantization (int8 weights, activations quantized
            per batch at run time; Conv and MatMul become ConvInteger / MatMulInteger), about
            4x smaller; `"float16"`: weights and arithmetic in float16 with float32 inputs and
            outputs kept (`keep_io_types`), about 2x smaller, for runtimes with fast float16.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}. Received: {mode!r}")
    import onnx

    if mode == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # onnxruntime's recommended pre-processing folds BatchNorm into the convolutions
        # first, so one set of int8 weights replaces conv + BN. Symbolic shape inference
        # (sympy) is unnecessary here: the graph has static shapes after the resize.
        prepared = dst + ".prep.onnx"
        try:
            quant_pre_process(src, prepared, skip_symbolic_shape=True)
            quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8)
        finally:
            if os.path.exists(prepared):
                os.remove(prepared)
    else:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(src), keep_io_types=True)
        _toposort(model.graph)
        onnx.save(model, dst)
    # The variant carries the record and bounds of the model it was made from.
    variant, source = onnx.load(dst), onnx.load(src, load_external_data=False)
    del variant.metadata_props[:]
    variant.metadata_props.extend(source.metadata_props)
    onnx.save(variant, dst)
    onnx.checker.check_model(dst, full_check=True)
    return dst


def _toposort(graph):
    """Orders nodes so each follows its inputs' producers: the float16 converter appends the
    casts it inserts at the end of the node list, which onnx.checker rejects."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise RuntimeError(f"ONNX graph has a cycle or a missing input at "
                               f"{[n.name for n in waiting[:3]]}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
