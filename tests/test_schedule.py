"""DnCSchedule: the plan of every preset and of the main job, by hand; serialization; errors."""

import pytest

from dnc_keras.schedule import DnCSchedule
from dnc_keras.training.config import TrainConfig
from dnc_keras.training.plan import build_schedule


def kinds(schedule):
    return [(a.epoch, a.kind, a.learners) for a in schedule.actions()]


def test_the_main_job():
    # glyphs: K = 4 by division every 2 epochs, 10 epochs, the last 20% (2) conquered.
    assert kinds(build_schedule(TrainConfig())) == [
        (2, "divide", 2), (4, "divide", 4), (6, "recluster", 4), (8, "recluster", 4),
        (8, "conquer", 4)]


@pytest.mark.parametrize("preset, expected", [
    # 100 epochs, K = 4 by epoch 4, conquer from epoch 100 - round(0.556 * 100) = 44.
    ("cub", [(2, "divide", 2), (4, "divide", 4)]
     + [(e, "recluster", 4) for e in range(6, 100, 2)] + [(44, "conquer", 4)]),
    ("cars", [(2, "divide", 2), (4, "divide", 4)]
     + [(e, "recluster", 4) for e in range(6, 100, 2)] + [(44, "conquer", 4)]),
])
def test_the_learned_mask_presets(preset, expected):
    schedule = build_schedule(TrainConfig.resolve(preset=preset))
    assert sorted(kinds(schedule)) == sorted(expected)


def test_sop_reaches_32_learners_at_epoch_10_and_conquers_at_80():
    schedule = build_schedule(TrainConfig.resolve(preset="sop"))
    actions = kinds(schedule)
    assert actions[:5] == [(2, "divide", 2), (4, "divide", 4), (6, "divide", 8),
                           (8, "divide", 16), (10, "divide", 32)]
    assert (80, "conquer", 32) in actions and schedule.learners_at(10) == 32
    assert all(k == "recluster" for e, k, _ in actions[5:] if k != "conquer")


@pytest.mark.parametrize("preset", ["inshop", "vehicleid"])
def test_the_cvpr_presets_start_with_k_means_and_stop_reclustering_at_the_conquer(preset):
    config = TrainConfig.resolve(preset=preset)
    schedule = build_schedule(config)
    actions = kinds(schedule)
    assert actions[0] == (0, "cluster", config.learners)  # no progressive division in CVPR
    conquer = [a for a in actions if a[1] == "conquer"]
    if config.conquer_epoch is None:
        assert not conquer
        return
    assert conquer == [(config.conquer_epoch, "conquer", 1 if config.conquer_mode == "cvpr"
                        else config.learners)]
    if config.conquer_mode == "cvpr":
        assert max(e for e, k, _ in actions if k == "recluster") < config.conquer_epoch


def test_a_single_learner_has_nothing_to_schedule():
    assert build_schedule(TrainConfig(learners=1)).actions() == []


def test_round_trip_and_errors():
    schedule = DnCSchedule(30, 8, 1, period=3, conquer_epoch=24, conquer_mode="cvpr")
    assert DnCSchedule.from_dict(schedule.to_dict()) == schedule
    assert schedule.to_dict()["actions"][0] == {"epoch": 3, "kind": "divide", "learners": 2}
    with pytest.raises(ValueError, match="power of 2"):
        DnCSchedule(10, 6, 1)
    with pytest.raises(ValueError, match="conquer_epoch"):
        DnCSchedule(10, 4, conquer_epoch=-1)
    assert all(a.kind != "conquer" for a in DnCSchedule(10, 4, conquer_epoch=12).actions())
    with pytest.raises(ValueError, match="conquer_mode"):
        DnCSchedule(10, 4, conquer_mode="both")
