import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_with_callbacks_example_runs_and_divides():
    model, sampler, history, metrics = _load("fit_with_callbacks").main(epochs=3, learners=2)
    assert len(history.history["loss"]) == 3
    # It divided 1 -> 2 at epoch 2 (period 2) and conquered the last epoch (3 - max(1, 0)).
    assert model.active_learners == 2 and sampler.num_clusters == 2
    assert sampler.updated_at_epoch == 2 and model.is_conquered
    sizes = sampler.cluster_sizes()
    assert len(sizes) == 2 and all(classes >= 2 for _, classes in sizes)
    # The printed metrics are the trained model's: the callback measured the same at the end.
    assert abs(metrics["MAP@R"] - history.history["val_MAP@R"][-1]) < 1e-6
