"""MirroredStrategy on two logical CPU devices: the global batch gives one device's result."""

import numpy as np
import pytest

import dist_harness

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def runs():
    return dist_harness.reference()


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_two_replicas_train_like_one_device_on_the_global_batch(runs, loop):
    # custom: DistributedTrainer on the sampler's tf.data pipeline; fit: Keras's model.fit.
    one, two = runs["one:fit" if loop == "fit" else "one:custom"], runs[f"mirrored:{loop}"]
    # 20 Adam steps through a division, a re-clustering and the conquer phase.
    np.testing.assert_allclose(two["weights"], one["weights"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(two["assignment"], one["assignment"])
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def test_custom_loop_and_fit_follow_the_same_dnc_schedule(runs):
    custom, fit = runs["one:custom"], runs["one:fit"]
    np.testing.assert_allclose(custom["weights"], fit["weights"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(custom["assignment"], fit["assignment"])
    for run in (runs["mirrored:custom"], runs["mirrored:fit"]):
        assert int(run["learners"]) == 2 and bool(run["conquered"])
        assert set(np.unique(run["assignment"])) == {0, 1}
        assert len(run["loss"]) == 5 and np.all(np.isfinite(run["loss"]))


def test_mining_each_replica_shard_alone_would_differ(runs):
    # The control that makes the equality above mean something: without the all-gather, each
    # replica mines on half the batch and the model drifts away from the one-device run.
    local, one = runs["mirrored-local:custom"], runs["one:custom"]
    assert np.abs(local["weights"] - one["weights"]).max() > 1e-3
