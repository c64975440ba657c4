import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_with_callbacks_example_runs_and_divides():
    history, metrics = _load("fit_with_callbacks").main(epochs=3, learners=2)
    assert len(history.history["loss"]) == 3
    assert "val_MAP@R" in history.history
    assert 0.0 < metrics["MAP@R"] <= 1.0
