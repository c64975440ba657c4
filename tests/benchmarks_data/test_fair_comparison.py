import json
import math

import numpy as np
import pytest
from scipy import stats

from dnc_keras.training import repeats
from dnc_keras.training.config import TrainConfig
from dnc_keras.training.plan import holdout_classes


def test_holdout_takes_whole_classes_and_is_fixed():
    labels = np.repeat(np.arange(20), 3)
    keep, held = holdout_classes(labels, 0.25)
    assert (keep ^ held).all()
    assert len(np.unique(labels[held])) == 5
    assert not set(labels[held]) & set(labels[keep])
    again, _ = holdout_classes(labels, 0.25)
    np.testing.assert_array_equal(keep, again)
    _, tiny = holdout_classes(labels, 0.01)
    assert len(np.unique(labels[tiny])) == 2  # at least 2 classes, to have negatives
    with pytest.raises(ValueError, match="leaving fewer than 2 to train on"):
        holdout_classes(np.repeat(np.arange(3), 2), 0.5)


def test_interval95_is_the_student_t_interval():
    values = [0.61, 0.64, 0.60, 0.66, 0.63]
    mean, half = repeats.interval95(values)
    expected = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx(expected)
    assert math.isnan(repeats.interval95([0.5])[1])
    assert repeats.interval95([0.5, float("nan"), 0.7])[0] == pytest.approx(0.6)


def test_run_seeds_writes_the_report(tmp_path, monkeypatch):
    from dnc_keras.training import job

    calls = []

    def fake_run(config, verbose=1, overwrite=False):
        calls.append((config.seed, config.seeds, config.out))
        r1 = 0.5 + 0.01 * config.seed
        return {"dataset": "cub", "test": {"R@1": r1, "MAP@R": r1 / 2},
                "selection": {"epoch": 3 + config.seed}}

    monkeypatch.setattr(job, "run", fake_run)
    config = TrainConfig(seed=4, seeds=3, out=str(tmp_path))
    report = repeats.run_seeds(config)
    assert [c[0] for c in calls] == [4, 5, 6] and {c[1] for c in calls} == {1}
    assert calls[0][2] == str(tmp_path / "seed_4")
    assert report["summary"]["R@1"]["mean"] == pytest.approx(0.55)
    assert report["summary"]["R@1"]["values"] == pytest.approx([0.54, 0.55, 0.56])
    assert report["selection"] == [7, 8, 9]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["seeds"] == [4, 5, 6]
    text = (tmp_path / "report.md").read_text()
    assert "| R@1 | 0.5500 | ± 0.0248 | 0.5400, 0.5500, 0.5600 |" in text


def test_summary_of_per_list_results():
    runs = [{"test": {"small": {"R@1": 0.9}, "large": {"R@1": 0.8}}},
            {"test": {"small": {"R@1": 0.7}, "large": {"R@1": 0.6}}}]
    summary = repeats.summarise(runs)
    assert list(summary) == ["small/R@1", "large/R@1"]
    assert summary["large/R@1"]["mean"] == pytest.approx(0.7)
