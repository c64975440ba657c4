"""serving/'s TF Serving configuration parses and agrees with itself (docker is not run here)."""

import os
import re

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

SERVING = os.path.join(os.path.dirname(__file__), "..", "..", "serving")
# BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto) is
# not in the tensorflow-serving-api wheel, so its field names are listed here.
BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                   "num_batch_threads", "thread_pool_name", "allowed_batch_sizes",
                   "pad_variable_length_inputs"}


def read(name):
    with open(os.path.join(SERVING, name)) as f:
        return f.read()


def test_models_config_matches_compose_mount():
    config = text_format.Parse(read("models.config"),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    compose = yaml.safe_load(read("docker-compose.yml"))["services"]["tfserving"]
    mounts = [v.replace("${MODEL_NAME:-glyphs}", "glyphs") for v in compose["volumes"]]
    assert f"../saved_models/glyphs:{model.base_path}:ro" in mounts
    assert model.name == "glyphs" and model.model_platform == "tensorflow"
    flags = compose["command"]
    assert "--model_config_file=/config/models.config" in flags
    assert "--batching_parameters_file=/config/batching_parameters.txt" in flags
    assert {"8500:8500", "8501:8501"} <= set(compose["ports"])


def test_batching_parameters_are_known_fields_and_never_pad_images():
    text = read("batching_parameters.txt")
    fields = {m.group(1) for m in re.finditer(r"^(\w+)\s*[:{]", text, re.MULTILINE)}
    assert fields <= BATCHING_FIELDS, fields - BATCHING_FIELDS
    assert re.search(r"^pad_variable_length_inputs: false$", text, re.MULTILINE)
