import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_with_callbacks_example_runs_and_divides():
    # 10 steps an epoch, not a pass over the images (41): the schedule is what is tested.
    model, sampler, history, metrics = _load("fit_with_callbacks").main(epochs=3, learners=2,
                                                                        steps_per_epoch=10)
    assert len(history.history["loss"]) == 3 and sampler.steps == 10
    # It divided 1 -> 2 at epoch 2 (period 2) and conquered the last epoch (3 - max(1, 0)).
    assert model.active_learners == 2 and sampler.num_clusters == 2
    assert sampler.updated_at_epoch == 2 and model.is_conquered
    sizes = sampler.cluster_sizes()
    assert len(sizes) == 2 and all(classes >= 2 for _, classes in sizes)
    # The printed metrics are the trained model's: the callback measured the same at the end.
    # Up to a near-tie's swap: faiss's threaded float32 search may order exact ties differently
    # between two passes (a fresh-clone run differed by 7e-6); another model differs by far more.
    assert abs(metrics["MAP@R"] - history.history["val_MAP@R"][-1]) < 1e-4


def test_own_folder_tutorial_trains_on_a_folder_and_saves_a_model_another_process_loads(
        tmp_path):
    import json
    import subprocess
    import sys

    import numpy as np
    from image_corpus import write_photo_folder

    folder = tmp_path / "photos"
    write_photo_folder(folder, classes=8, per_class=6)
    model, history, metrics = _load("own_folder").main(str(folder), epochs=3, size=32,
                                                       out=str(tmp_path))
    assert len(history.history["loss"]) == 3 and model.active_learners == 2
    assert set(metrics) >= {"R@1", "MAP@R", "NMI"}
    assert (tmp_path / "neighbours.png").stat().st_size > 0
    # The saved model, in a fresh process, embeds as this one does (the record travels along).
    from dnc_keras.preprocessing import load_files

    files = sorted(str(p) for p in folder.rglob("*.*"))[:3]
    images = np.asarray(load_files(files, model.preprocessing))
    script = ("import json, sys, numpy as np, keras, dnc_keras; "
              f"m = keras.saving.load_model({str(tmp_path / 'model.keras')!r}); "
              f"x = np.load({str(tmp_path / 'x.npy')!r}); "
              "print(json.dumps(m.predict(x, verbose=0).tolist()))")
    np.save(tmp_path / "x.npy", images)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    np.testing.assert_allclose(json.loads(out.stdout.strip().splitlines()[-1]),
                               model.predict(images, verbose=0), atol=1e-5)


def _run_tutorial(name, *args, timeout=240):
    """A tutorial in a fresh process (TensorFlow's devices are fixed when it starts); its last
    stdout line, parsed as JSON."""
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.abspath(EXAMPLES))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TF_CONFIG", None)
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Each tutorial below runs for about a minute in processes of its own: each is its own xdist
# group, so the two workers share them (tests/conftest.py otherwise groups by file).


def _check_two_replicas(result, strategy):
    assert result["strategy"] == strategy and result["replicas"] == 2
    assert result["learners"] == 2 and result["conquered"]  # divided, then conquered
    # The global batch's mining on two replicas trains as one device does: Adam turns the
    # float summation-order noise into weight differences of about 5e-5 (measured, 16 steps).
    assert result["max_abs_weight_diff_vs_one_device"] < 1e-3
    assert 0.2 < result["metrics"]["R@1"] <= 1.0  # digits never seen (5-9): better than chance


@pytest.mark.slow  # tests/distributed/test_mirrored.py checks two replicas in the README's command
@pytest.mark.xdist_group("test_two_devices_tutorial_mirrored")
def test_two_devices_tutorial_mirrored():
    _check_two_replicas(_run_tutorial("two_devices", "mirrored", "--steps", "2"),
                        "MirroredStrategy")


# In the slow set (python -m pytest -m slow) with the mirrored run: two worker processes cost
# over a minute, and tests/distributed/test_multi_worker.py checks the same cluster in the
# README's test command.
@pytest.mark.slow
@pytest.mark.xdist_group("test_two_devices_tutorial_two_worker_processes")
def test_two_devices_tutorial_two_worker_processes():
    _check_two_replicas(_run_tutorial("two_devices", "multi-worker", "--steps", "2"),
                        "CollectiveAllReduceStrategy")


@pytest.mark.xdist_group("test_export_serve_query_tutorial")
def test_export_serve_query_tutorial(tmp_path):
    import json

    import numpy as np

    from dnc_keras.export import load_run
    from dnc_keras.preprocessing import load_files

    report = _run_tutorial("export_serve_query", str(tmp_path))
    assert report["queries"] == 6 and os.path.isdir(report["export"])
    assert set(report["max_abs_diff_vs_run"]) == {"rest", "grpc", "onnxruntime"}
    # Every route's embeddings of the files, against this process's own run of the trained
    # model on them (the tutorial's edge child exits non-zero if it could import TensorFlow).
    with open(tmp_path / "embeddings.json") as f:
        found = json.load(f)
    run = load_run(str(tmp_path / "run"))
    expected = run.model.embed(load_files(found["files"], run.preprocessing))
    assert expected.shape == (6, 16)
    for route in ("rest", "grpc", "onnxruntime"):
        np.testing.assert_allclose(found[route], expected, rtol=0, atol=1e-4, err_msg=route)
        assert report["max_abs_diff_vs_run"][route] < 1e-4
