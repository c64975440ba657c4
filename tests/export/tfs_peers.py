"""Protocol peers for the serving clients: TF Serving's gRPC PredictionService and its REST API,
implemented in-process on top of an exported SavedModel.

The SavedModel runs the way TF Serving runs it: loaded into a TF1 Session from the MetaGraph
(C++ `LoadSavedModel` does the same), signature inputs and outputs mapped to tensor names,
and fed without any Python-side shape check (`CallableOptions`), because TF Serving checks
dtypes only. So bad input reaches the graph's asserts exactly as it would in production, and
the dtype error is the runtime's own. Errors follow TF Serving: NOT_FOUND for an unknown
model, FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for bad input; REST
answers {"error": message} with 404 / 400.
"""

import base64
import http.server
import json
import os
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)


class ServingFailure(Exception):
    """A request error with the gRPC status TF Serving would return."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Servable:
    """The latest version of DIR/NAME, loaded like TF Serving loads it, warm-up replayed."""

    def __init__(self, export_root, name):
        self.name = name
        folder = os.path.join(export_root, name)
        self.version = max(int(d) for d in os.listdir(folder) if d.isdigit())
        self.path = os.path.join(folder, str(self.version))
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], self.path)
        self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                           if not k.startswith("__")}
        self._callables = {}
        self.requests = 0
        self.warmup_replayed = self._replay_warmup()

    def _replay_warmup(self):
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        count = 0
        for record in tf.compat.v1.io.tf_record_iterator(path):
            log = prediction_log_pb2.PredictionLog.FromString(record)
            self.predict(log.predict_log.request)
            count += 1
        self.requests = 0
        return count

    def check_spec(self, model_spec):
        if model_spec.name != self.name:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                 f"Servable not found for request: Latest({model_spec.name})")
        if model_spec.HasField("version") and model_spec.version.value != self.version:
            raise ServingFailure(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({model_spec.name}, "
                f"{model_spec.version.value})")

    def signature(self, name):
        name = name or "serving_default"
        if name not in self.signatures:
            raise ServingFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f'Serving signature key "{name}" not found.')
        return name, self.signatures[name]

    def run(self, signature_name, inputs):
        """{alias: numpy} -> {alias: numpy} through the session, TF Serving style."""
        signature_name, signature = self.signature(signature_name)
        for alias in inputs:
            if alias not in signature.inputs:
                raise ServingFailure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor alias not found in signature: {alias}. Inputs expected to "
                    f"be in the set {{{','.join(sorted(signature.inputs))}}}.")
        if len(inputs) != len(signature.inputs):
            raise ServingFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(inputs)}!="
                f"{len(signature.inputs)} len({{{','.join(sorted(inputs))}}}) != "
                f"len({{{','.join(sorted(signature.inputs))}}})")
        aliases = sorted(signature.inputs)
        outputs = sorted(signature.outputs)
        key = signature_name
        if key not in self._callables:
            options = config_pb2.CallableOptions(
                feed=[signature.inputs[a].name for a in aliases],
                fetch=[signature.outputs[o].name for o in outputs])
            self._callables[key] = self.session._make_callable_from_options(options)
        self.requests += 1
        try:
            values = self._callables[key](*[inputs[a] for a in aliases])
        except tf.errors.OpError as error:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, error.message) from error
        return signature_name, dict(zip(outputs, values))

    def predict(self, request):
        self.check_spec(request.model_spec)
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        name, outputs = self.run(request.model_spec.signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = name
        wanted = list(request.output_filter) or list(outputs)
        for alias in wanted:
            if alias not in outputs:
                raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"output tensor alias not found in signature: {alias}")
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def signature_def_map(self):
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signatures.items():
            signatures.signature_def[name].CopyFrom(signature)
        return signatures


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow-serving-api's PredictionService: Predict and GetModelMetadata."""

    def __init__(self, servable):
        self.servable = servable

    def Predict(self, request, context):
        try:
            return self.servable.predict(request)
        except ServingFailure as failure:
            context.abort(failure.code, str(failure))

    def GetModelMetadata(self, request, context):
        try:
            self.servable.check_spec(request.model_spec)
        except ServingFailure as failure:
            context.abort(failure.code, str(failure))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.servable.name
        response.model_spec.version.value = self.servable.version
        for field in request.metadata_field:
            if field != "signature_def":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Metadata field {field} is not supported")
            response.metadata[field].Pack(self.servable.signature_def_map())
        return response


def start_grpc(servable):
    """A grpc.server on a free localhost port; returns (server, "localhost:PORT")."""
    # TF Serving's model server accepts messages up to INT32_MAX bytes (server.cc).
    limit = 2 ** 31 - 1
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(servable), server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    return server, f"localhost:{port}"


# -- REST --------------------------------------------------------------------------------------
_HTTP = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
         grpc.StatusCode.FAILED_PRECONDITION: 400}


def _json_to_array(value, dtype, where):
    """One JSON tensor value -> numpy array of the signature dtype, as TF Serving parses it."""
    if dtype == tf.string:
        def decode(item):
            if isinstance(item, dict):
                if set(item) != {"b64"}:
                    raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                         f"{where}: expected {{\"b64\": ...}}, got keys "
                                         f"{sorted(item)}")
                try:
                    return base64.b64decode(item["b64"], validate=True)
                except ValueError as error:
                    raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                         f"{where}: Unable to base64 decode") from error
            if isinstance(item, list):
                return [decode(i) for i in item]
            return str(item).encode()

        return np.array(decode(value), dtype=object)
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             f"{where}: ragged nested lists") from error
    if array.dtype == object:
        raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: ragged nested lists")
    np_dtype = dtype.as_numpy_dtype
    if np.issubdtype(np_dtype, np.integer):
        if array.size and not np.issubdtype(array.dtype, np.integer):
            bad = array.reshape(-1)[0]
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"JSON Value: {bad} not of expected type: {dtype.name}")
        info = np.iinfo(np_dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"JSON Value out of range for {dtype.name}")
    return array.astype(np_dtype)


def rest_predict(servable, body, version=None):
    """TF Serving's :predict: row ("instances") or columnar ("inputs") format."""
    if version is not None and version != servable.version:
        raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: Specific({servable.name}, "
                             f"{version})")
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             "Missing 'inputs' or 'instances' key")
    name, signature = servable.signature(body.get("signature_name"))
    dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in signature.inputs.items()}
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 "Expecting 'instances' to be an list/array")
        if instances and all(isinstance(i, dict) and "b64" not in i for i in instances):
            columns = {alias: [i.get(alias) for i in instances] for alias in dtypes}
        elif len(dtypes) == 1:
            columns = {next(iter(dtypes)): instances}
        else:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 "instances must be objects naming each input")
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) else {next(iter(dtypes)): inputs}
    arrays = {}
    for alias, value in columns.items():
        if alias not in dtypes:
            raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"input tensor alias not found in signature: {alias}")
        arrays[alias] = _json_to_array(value, dtypes[alias], alias)
    _, outputs = servable.run(name, arrays)
    if "instances" in body:
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        rows = len(next(iter(outputs.values())))
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()}
                                for i in range(rows)]}
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def _handler(servable):
    prefix = f"/v1/models/{servable.name}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            path = self.path
            if not path.startswith("/v1/models/"):
                raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Malformed request: {path}")
            if not path.startswith(prefix):
                name = path[len("/v1/models/"):].split("/")[0].split(":")[0]
                raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                     f"Servable not found for request: Latest({name})")
            rest, version = path[len(prefix):], None
            if rest.startswith("/versions/"):
                number, _, rest = rest[len("/versions/"):].partition(":")
                number, _, tail = number.partition("/")
                version = int(number)
                rest = (":" + rest) if rest else ("/" + tail if tail else "")
            return rest, version

        def do_GET(self):
            try:
                rest, _ = self._route()
                if rest == "":
                    self._send(200, {"model_version_status": [
                        {"version": str(servable.version), "state": "AVAILABLE",
                         "status": {"error_code": "OK", "error_message": ""}}]})
                elif rest == "/metadata":
                    signatures = json_format.MessageToDict(
                        servable.signature_def_map(), preserving_proto_field_name=True)
                    self._send(200, {"model_spec": {"name": servable.name,
                                                    "version": str(servable.version),
                                                    "signature_name": ""},
                                     "metadata": {"signature_def": signatures}})
                else:
                    raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                         f"Malformed request: GET {self.path}")
            except ServingFailure as failure:
                self._send(_HTTP.get(failure.code, 500), {"error": str(failure)})

        def do_POST(self):
            try:
                rest, version = self._route()
                if rest != ":predict":
                    raise ServingFailure(grpc.StatusCode.NOT_FOUND,
                                         f"Malformed request: POST {self.path}")
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError as error:
                    raise ServingFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                         f"JSON Parse error: {error}") from error
                self._send(200, rest_predict(servable, body, version))
            except ServingFailure as failure:
                self._send(_HTTP.get(failure.code, 500), {"error": str(failure)})

    return Handler


def start_rest(servable):
    """A ThreadingHTTPServer on a free localhost port; returns (server, "http://...")."""
    server = http.server.ThreadingHTTPServer(("localhost", 0), _handler(servable))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://localhost:{server.server_address[1]}"


def main(argv=None):
    """`python tfs_peers.py EXPORT_ROOT NAME`: serve DIR/NAME's latest version on free
    localhost ports, print {"grpc": target, "rest": url} on one line, serve until stdin closes
    (the journeys run it as its own process, as TF Serving would be)."""
    import sys

    export_root, name = (argv or sys.argv[1:])[:2]
    servable = Servable(export_root, name)
    grpc_server, target = start_grpc(servable)
    rest_server, url = start_rest(servable)
    print(json.dumps({"grpc": target, "rest": url, "warmup": servable.warmup_replayed}),
          flush=True)
    sys.stdin.read()
    grpc_server.stop(grace=None)
    rest_server.shutdown()


if __name__ == "__main__":
    main()
