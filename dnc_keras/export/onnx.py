"""ONNX export of the serving graph (tf2onnx from_function) and its edge variants.

tf2onnx's `from_keras` does not handle Keras 3 models, so the ONNX model is converted from the
same `tf.function` that serves `serving_default` (uint8 images [batch, height, width, C], any
batch, height and width, resized and scaled inside), minus the asserts, which ONNX cannot
express: ONNX Runtime checks dtype, rank and channel count against the declared input, and
`serving/edge_infer.py` checks the rest before running.
"""

import os

import numpy as np
import tensorflow as tf

from dnc_keras import serving_signatures as sig

DEFAULT_OPSET = 17
QUANTIZE_MODES = ("int8", "float16")
# Symbolic names shown by Netron and onnxruntime instead of tf2onnx's "unk__N".
_INPUT_DIMS = ("batch", "height", "width")


def export_onnx(model, path, input_shape, invert=False, opset=DEFAULT_OPSET):
    """Converts `model`'s serving graph to ONNX at `path` and checks it with onnx.checker.

    Args:
        model: a `DnCModel` (or any callable float32 images in [0, 1] -> embeddings).
        path: the .onnx file to write.
        input_shape: the encoder's (H, W, C).
        invert: bake 1 - x into the graph, as `serving_signatures.preprocess`. Defaults to
            `False`.
        opset: ONNX opset. Defaults to `17`.

    Returns:
        The `onnx.ModelProto` written.
    """
    import onnx
    import tf2onnx

    serve = tf.function(sig.images_function(model, input_shape, invert=invert, checks=False))
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=[sig.images_spec(int(input_shape[-1]))], opset=opset)
    _name_dynamic_dims(proto)
    proto.doc_string = ("dnc_keras embedding: uint8 images [batch, height, width, channels] -> "
                        "L2-normalised float32 embeddings [batch, d]")
    onnx.save(proto, path)
    check_onnx(path)
    return proto


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


def session(path, threads=None):
    """An onnxruntime CPU InferenceSession of the file.

    Args:
        threads: intra-op threads. Defaults to `None` (onnxruntime's choice).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


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

        # Resize stays in float32: converted, its roi/scales inputs become float16 tensors
        # that onnxruntime's shape inference rejects. The network runs in float16.
        model = convert_float_to_float16(onnx.load(src), keep_io_types=True,
                                         op_block_list=["Resize"])
        _toposort(model.graph)
        onnx.save(model, dst)
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
