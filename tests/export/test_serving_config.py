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


def _third_party_imports(script):
    """Top-level non-standard-library modules a fresh interpreter holds after importing script."""
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {os.path.abspath(SERVING)!r}); import {script}\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    local = {name[:-3] for name in os.listdir(SERVING) if name.endswith(".py")}
    return {m for m in out.stdout.split() if m not in sys.stdlib_module_names
            and not m.startswith("_") and m not in local}


def test_client_dependencies_are_what_the_readme_says():
    # The README's table is what a user installs on a machine without dnc_keras.
    readme = read("README.md")
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines()
            if line.startswith("| `")}
    assert _third_party_imports("rest_client") == {"numpy", "PIL"}
    assert "numpy and Pillow" in rows["rest_client.py"]
    assert "no TensorFlow" in rows["rest_client.py"]
    assert _third_party_imports("edge_infer") == {"numpy", "PIL", "onnxruntime"}
    assert "onnxruntime, numpy and Pillow only" in rows["edge_infer.py"]
