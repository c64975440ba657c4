"""benchmarks/bench_train_step.py in its tiny mode: the step half and the epoch half, each
candidate a worker process (started from `main` in-process); without PyTorch the peer is skipped
and the results say so."""

import importlib.util

import numpy as np
import pytest

from bench_harness import BENCHMARKS, load_script, ratio_ok, read_results, summary_ok

HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "pytorch_metric_learning"))


@pytest.mark.bench_tiny
def test_bench_train_step_tiny_steps(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_train_step")
    out = tmp_path / "steps.json"
    argv = ["--tiny", "--skip-epoch", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_train_step", *argv)
    assert results["benchmark"] == "train_step" and "epoch" not in results
    assert results["settings"] == {"steps_per_unit": 2, "repeats": 1, "learners": 4,
                                   "batch": 80}
    step = results["step"]
    measured = {"dnc", "keras"} | ({"torch_pml"} if HAS_TORCH else set())
    assert set(step["candidates"]) == measured
    if not HAS_TORCH:
        assert "not installed" in step["skipped"]["torch_pml"]
    for name, entry in step["candidates"].items():
        assert summary_ok(entry, repeats=1), name
        assert entry["images_per_unit"] == 2 * 80
        assert np.isclose(entry["images_per_s"], 160 / entry["median_s"])
        assert np.isclose(entry["ms_per_step"], 1000 * entry["median_s"] / 2)
        assert entry["cpu_ms_per_step"] > 0 and len(entry["other_load"]) == 1
    ratio = step["speed_ratios"]["dnc/keras"]
    assert ratio_ok(ratio)
    candidates = step["candidates"]
    assert np.isclose(ratio["median"],
                      candidates["keras"]["median_s"] / candidates["dnc"]["median_s"])


@pytest.mark.bench_tiny
def test_bench_train_step_tiny_epochs(tmp_path, repo_on_pythonpath):
    bench = load_script("bench_train_step")
    out = tmp_path / "epochs.json"
    argv = ["--tiny", "--skip-step", "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_train_step", *argv)
    assert "step" not in results
    epoch = results["epoch"]
    assert set(epoch["candidates"]) == {"dnc_epoch", "keras_epoch"}
    for name, entry in epoch["candidates"].items():
        assert summary_ok(entry, repeats=1), name
        # 24 classes x 8 random images: 2 steps of 80 per epoch, 2 epochs per unit.
        assert (entry["train_images"], entry["steps_per_epoch"]) == (192, 2)
        assert entry["images_per_unit"] == 2 * 2 * 80
    # Each DnC unit holds exactly one re-clustering, and it embedded every training image.
    dnc = epoch["candidates"]["dnc_epoch"]
    assert dnc["recluster"]["repeats"] == 1
    assert 0 < dnc["recluster"]["median_s"] < dnc["median_s"]
    assert ratio_ok(epoch["time_ratio_dnc_over_keras"])
    share = epoch["recluster_share_of_dnc_time"]["median"]
    assert np.isclose(share, dnc["recluster"]["median_s"] / dnc["median_s"])
    assert epoch["target"] == 1.10
    assert epoch["met"] == (epoch["time_ratio_dnc_over_keras"]["median"] <= 1.10)


@pytest.mark.parametrize("flags, name", [
    ([], "train_step.json"), (["--skip-step"], "train_step_epoch.json"),
    (["--skip-epoch"], "train_step_step.json")])
def test_bench_train_step_halves_write_their_own_files(flags, name):
    bench = load_script("bench_train_step")
    assert bench.parse_args(flags).out == str(BENCHMARKS / "results" / name)
    assert bench.parse_args(["--tiny", *flags]).out == str(BENCHMARKS / "results" / "tiny" / name)


def test_bench_train_step_refuses_to_skip_both():
    bench = load_script("bench_train_step")
    with pytest.raises(SystemExit):
        bench.parse_args(["--skip-step", "--skip-epoch"])


def test_renorm_option_builds_the_default_conv4(repo_on_pythonpath):
    """`dnc+renorm` times the network `dnc-keras train` builds (batch renormalisation); the
    other candidates keep `backbones.conv4`'s plain BatchNorm, as the committed figures ran."""
    bench = load_script("bench_train_step")

    def renorm_flags(options):
        return _renorm_flags(bench._dnc_model(2, False,
                                              normalization=bench._normalization(options)))

    assert bench._parse("dnc+renorm") == ("dnc", {"renorm"})
    assert renorm_flags({"renorm"}) == {True}
    assert renorm_flags(set()) == {False}


def test_the_default_route_is_an_epoch_candidate(tmp_path, repo_on_pythonpath):
    """`dnc_epoch+renorm+bank+walk` against `keras_epoch+renorm+walk`: what `dnc-keras train`
    runs by default against a plain Keras epoch of the same network and batches; its
    re-clustering reads the bank (fewer images embedded than there are)."""
    bench = load_script("bench_train_step")
    out = tmp_path / "default.json"
    argv = ["--tiny", "--skip-step", "--out", str(out), "--epoch-candidates",
            "dnc_epoch+renorm+bank+walk", "keras_epoch+renorm+walk"]
    assert bench.main(argv) == str(out)
    epoch = read_results(out, "bench_train_step", *argv)["epoch"]
    dnc = epoch["candidates"]["dnc_epoch+renorm+bank+walk"]
    assert ratio_ok(epoch["time_ratio_dnc_over_keras"])
    assert all(n < dnc["train_images"] for n in dnc["recluster_embedded_images"])
    assert _renorm_flags(bench._keras_plain_model(False, normalization="renorm")) == {True}


def _renorm_flags(model):
    """The `renorm` flags of every normalisation layer, nested models included."""
    layers, flags = list(model.layers), set()
    while layers:
        layer = layers.pop()
        layers += getattr(layer, "layers", [])
        if hasattr(layer, "renorm"):
            flags.add(layer.renorm)
    return flags


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch peer: pip install -e .[benchmark]")
def test_torch_renorm_peer_computes_what_the_keras_layer_computes(repo_on_pythonpath):
    """`torch_pml+renorm` is the same network as `dnc+renorm`: over three training steps of
    the same inputs and weights, the PyTorch layer's outputs, input gradients and renorm
    statistics match `FusedBatchNormalization(renorm=True)`'s (float32 rounding)."""
    import tensorflow as tf
    import torch

    from dnc_keras.backbones import FusedBatchNormalization

    bench = load_script("bench_train_step")
    rng = np.random.default_rng(0)
    keras_layer = FusedBatchNormalization(renorm=True, epsilon=1e-5)
    torch_layer = bench._torch_batch_renorm()(6)
    torch_layer.train()
    keras_layer.build((8, 5, 5, 6))
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.normal(size=6)
    keras_layer.gamma.assign(gamma.astype(np.float32))
    keras_layer.beta.assign(beta.astype(np.float32))
    with torch.no_grad():
        torch_layer.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
        torch_layer.bias.copy_(torch.from_numpy(beta.astype(np.float32)))
    for step in range(3):
        x = rng.normal(1.0 + step, 2.0, (8, 5, 5, 6)).astype(np.float32)
        upstream = rng.normal(size=x.shape).astype(np.float32)
        tf_x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tf_x)
            tf_out = keras_layer(tf_x, training=True)
            tf_loss = tf.reduce_sum(tf_out * upstream)
        tf_grad = tape.gradient(tf_loss, tf_x).numpy()
        torch_x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
        torch_out = torch_layer(torch_x)
        (torch_out * torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy())).sum().backward()
        np.testing.assert_allclose(torch_out.detach().numpy().transpose(0, 2, 3, 1),
                                   tf_out.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(torch_x.grad.numpy().transpose(0, 2, 3, 1), tf_grad,
                                   rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(torch_layer.renorm_mean.numpy(),
                                   keras_layer.renorm_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(torch_layer.renorm_stddev.numpy(),
                                   keras_layer.renorm_stddev.numpy(), rtol=1e-5, atol=1e-6)
