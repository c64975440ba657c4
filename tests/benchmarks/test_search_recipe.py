"""benchmarks/search_recipe.py: the trials it draws, and its tiny mode on an Omniglot-like
folder (validation classes only, never the test classes)."""

import json

import numpy as np
import pytest
from bench_harness import load_script, read_results


def test_trials_are_distinct_seeded_draws_of_the_family_space():
    search = load_script("search_recipe")
    trials = search.draw_trials("dnc", 12, search_seed=0)
    assert trials == search.draw_trials("dnc", 12, search_seed=0)
    assert trials != search.draw_trials("dnc", 12, search_seed=1)
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == 12
    space = {**search.SPACE_SHARED, **search.SPACE_DNC}
    for trial in trials:
        assert (trial["loss"], trial["margin"]) in space["loss"]
        assert all(trial[key] in values for key, values in space.items() if key != "loss")
        assert trial["eval_every"] == trial["epochs"] // search.EVALUATIONS_PER_TRIAL
    glyphs = search.draw_trials("dnc", 12, search_seed=0, dataset="glyphs")
    assert {t["epochs"] for t in glyphs} <= set(search.EPOCHS["glyphs"])
    assert [{**t, "epochs": None, "eval_every": None} for t in glyphs] == \
        [{**t, "epochs": None, "eval_every": None} for t in trials]
    # The random trials and the second stage stay within issue 14's 40 runs per dataset.
    assert 2 * (search.BUDGET + search.refine_runs(search.REFINE_SEEDS)) <= 40
    assert 2 * (search.max_budget() + search.refine_runs(search.REFINE_SEEDS)) <= 40
    single = search.draw_trials("single", 12, search_seed=0)
    assert {t["learners"] for t in single} == {1}
    assert {t["subspaces"] for t in single} == {"fixed", "learned"}


@pytest.mark.bench_tiny
def test_search_recipe_tiny_sees_validation_classes_only(tmp_path, omniglot_replica):
    search = load_script("search_recipe")
    out, recipe_file = tmp_path / "search.json", tmp_path / "recipe.yaml"
    argv = ["--tiny", "--data-dir", str(omniglot_replica), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out), "--write-recipe", str(recipe_file)]
    assert search.main(argv) == str(out)
    results = read_results(out, "search_recipe", *argv)
    # 2 random trials per family, then the option on and off at seed 0 (the choice's own trial
    # being off at seed 0): 1 more run per family.
    assert results["runs"] == 6 and results["fixed"]["test_evaluation"] is False
    for family, entry in results["families"].items():
        scores = [t["validation"]["MAP@R"] for t in entry["trials"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 2
        assert entry["chosen"] == entry["trials"][0]
        stage = entry["refine"]["freeze_backbone_on_recluster"]
        off, on = stage["values"]
        assert off["MAP@R"]["0"] == entry["chosen"]["validation"]["MAP@R"]
        for tried in (off, on):
            assert tried["mean"] == pytest.approx(np.mean(list(tried["MAP@R"].values())))
        assert stage["kept"] == (on["mean"] > off["mean"])
        assert entry["recipe"] == {**entry["chosen"]["settings"],
                                   "freeze_backbone_on_recluster": stage["kept"]}
    for folder in (tmp_path / "runs").iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert "test" not in metrics and metrics["selection"]["metric"] == "validation MAP@R"
        assert json.loads((folder / "config.json").read_text())["validation_classes"] == 0.25
    records = sorted(p.name for p in (tmp_path / "search.runs").glob("*.json"))
    refined = [f"{family}-freeze_backbone_on_recluster-True-s0.json"
               for family in ("dnc", "single")]
    assert records == sorted(["dnc-00.json", "dnc-01.json", "single-00.json",
                              "single-01.json"] + refined)
    frozen = json.loads((tmp_path / "search.runs" / refined[0]).read_text())
    assert frozen["settings"]["freeze_backbone_on_recluster"] is True
    assert frozen["settings"]["seed"] == 0
    # The written recipe is the DnC family's, on the searched data, as train's --config reads it.
    from dnc_keras.training.config import TrainConfig

    config = TrainConfig.resolve(path=str(recipe_file))
    dnc = results["families"]["dnc"]["recipe"]
    assert {key: getattr(config, key) for key in dnc if key != "eval_every"} == \
        {key: value for key, value in dnc.items() if key != "eval_every"}
    assert (config.dataset, config.data_dir, config.image_size) == ("omniglot",
                                                                    str(omniglot_replica), 28)
    assert config.validation_classes == 0.0 and config.test_evaluation  # the search's own: not
    # A record's validation score is its curve's best point.
    record = json.loads((tmp_path / "search.runs" / "dnc-00.json").read_text())
    best = max(record["curve"], key=lambda point: point["MAP@R"])
    assert record["validation"]["MAP@R"] == best["MAP@R"]
    assert record["validation"]["epoch"] == best["epoch"]


def test_a_folder_is_searched_at_the_same_steps_and_must_be_named(tmp_path, capsys):
    search = load_script("search_recipe")
    folder = search.draw_trials("dnc", 12, search_seed=0, dataset="folder")
    assert [t["epochs"] * search.DATASETS["folder"]["steps_per_epoch"] for t in folder] == \
        [t["epochs"] * 30 for t in search.draw_trials("dnc", 12, search_seed=0,
                                                      dataset="glyphs")]
    with pytest.raises(SystemExit, match="Your folder not found at .*nowhere: pass --data-dir"):
        search.main(["--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "s.json")])
    with pytest.raises(SystemExit, match=r"Your folder not found \(no --data-dir given\)"):
        search.main(["--dataset", "folder", "--out", str(tmp_path / "s.json")])
