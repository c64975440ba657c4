"""kill -9 mid-epoch, restart, and the run ends with the uninterrupted run's model."""

import numpy as np
import pytest

import dist_harness

pytestmark = pytest.mark.timeout(500)

# 5 epochs x 4 steps, a checkpoint every 2 steps and at each epoch's end.
CHECKPOINTS = ["--checkpoint-every", "2"]


def _assert_same_model(resumed, uninterrupted):
    np.testing.assert_allclose(resumed["weights"], uninterrupted["weights"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(resumed["assignment"], uninterrupted["assignment"])
    assert int(resumed["learners"]) == 2 and bool(resumed["conquered"])


def test_killed_process_resumes_mid_epoch_to_the_same_model(tmp_path):
    args = ["--devices", "2", "--runs", "mirrored:custom", "--checkpoint-dir",
            str(tmp_path / "checkpoints"), *CHECKPOINTS]
    out = str(tmp_path / "resumed.npz")
    with dist_harness.processes(tmp_path) as group:
        # Step 19 is epoch 4's fourth step: after the re-clustering, the conquer switch and the
        # checkpoint at step 18, before the epoch's end.
        first = group.start("first", [*args, "--out", out, "--pause-at", "19"])
        group.wait_for(first, "PAUSED")
        group.kill(first)
        second = group.start("second", [*args, "--out", out])
        group.wait_all([second])
    resumed = dist_harness.load(out, "mirrored:custom")
    assert str(resumed["restored_from"]).endswith("ckpt-18")
    assert len(resumed["loss"]) == 1  # only epoch 4 was left to finish
    reference = dist_harness.reference()["mirrored:custom"]
    _assert_same_model(resumed, reference)
    # The resumed epoch logs its mean loss over all its steps, as the uninterrupted run did
    # (not only over the steps after the resume): the running means are checkpointed.
    np.testing.assert_allclose(resumed["loss"][-1], reference["loss"][-1], rtol=1e-5)


def test_killed_worker_and_restarted_cluster_resume_to_the_same_model(tmp_path):
    args = ["--checkpoint-dir", str(tmp_path / "checkpoints"), *CHECKPOINTS]
    with dist_harness.processes(tmp_path) as group:
        # Worker 1 stops after step 11 (epoch 2, just divided into 2 learners; last checkpoint
        # at step 10) and is killed. A cluster manager then restarts the whole job: the chief
        # is blocked in a collective with the dead worker (TensorFlow's health check would make
        # it exit with an error after some seconds), so it is killed and restarted too.
        procs = dist_harness.run_cluster(group, args, tag="first", pause=(1, 11))
        group.wait_for(procs[1], "PAUSED")
        group.kill(procs[1])
        group.kill(procs[0])
        procs = dist_harness.run_cluster(group, args, tag="second")
        group.wait_all(procs)
    chief, worker = (dist_harness.load(tmp_path / f"second-worker{i}.npz", "multi-worker:custom")
                     for i in range(2))
    assert str(chief["restored_from"]).endswith("ckpt-10")
    np.testing.assert_array_equal(worker["weights"], chief["weights"])
    np.testing.assert_array_equal(worker["assignment"], chief["assignment"])
    _assert_same_model(chief, dist_harness.reference()["mirrored:custom"])
