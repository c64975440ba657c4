"""serving/'s TF Serving configuration parses and agrees with itself (docker is not run here)."""

import os

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

SERVING = os.path.join(os.path.dirname(__file__), "..", "..", "serving")


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
    assert {"8500:8500", "8501:8501"} <= set(compose["ports"])


def test_server_side_batching_stays_off():
    """The graph batches after its resize; TF Serving's own batching would concatenate raw
    images of different sizes and fail (tests/export/test_batching.py)."""
    flags = yaml.safe_load(read("docker-compose.yml"))["services"]["tfserving"]["command"]
    assert not any(flag.startswith(("--enable_batching", "--batching_parameters_file"))
                   for flag in flags)
