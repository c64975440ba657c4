"""Two MultiWorkerMirroredStrategy workers on localhost train as one machine with two devices."""

import os

import numpy as np
import pytest

import dist_harness

pytestmark = pytest.mark.timeout(400)


def test_two_workers_agree_on_weights_and_clusters(tmp_path):
    checkpoints = str(tmp_path / "checkpoints")
    with dist_harness.processes(tmp_path) as group:
        procs = dist_harness.run_cluster(group, ["--checkpoint-dir", checkpoints,
                                                 "--checkpoint-every", "2"],
                                         runs="multi-worker:custom")
        group.wait_all(procs)
    chief, worker = (dist_harness.load(tmp_path / f"run-worker{i}.npz", "multi-worker:custom")
                     for i in range(2))
    np.testing.assert_array_equal(worker["weights"], chief["weights"])
    np.testing.assert_array_equal(worker["assignment"], chief["assignment"])
    assert int(chief["learners"]) == 2 and bool(chief["conquered"])

    # Same global batches, split over two processes instead of two devices.
    two_devices = dist_harness.reference()["mirrored:custom"]
    np.testing.assert_allclose(chief["weights"], two_devices["weights"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(chief["assignment"], two_devices["assignment"])

    # Only the chief's checkpoints remain; the other worker's scratch copy is gone.
    names = sorted(os.listdir(os.path.join(checkpoints, "custom")))
    assert "checkpoint" in names and "ckpt-20.index" in names
    assert not [n for n in names if n.startswith(".worker")]
