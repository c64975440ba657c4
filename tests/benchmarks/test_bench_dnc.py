"""benchmarks/bench_dnc.py in its tiny mode on an Omniglot-like folder, in-process, and its
default results names (one per dataset and set of variants)."""

import json

import numpy as np
import pytest

from bench_harness import BENCHMARKS, load_script, read_results


@pytest.mark.bench_tiny
def test_bench_dnc_tiny(tmp_path, omniglot_replica):
    bench = load_script("bench_dnc")
    out = tmp_path / "dnc.json"
    argv = ["--tiny", "--data-dir", str(omniglot_replica), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out)]
    assert bench.main(argv) == str(out)
    results = read_results(out, "bench_dnc", *argv)
    assert results["command"] == results["provenance"]["command"]
    assert results["common"]["data_dir"] == str(omniglot_replica)
    assert (results["common"]["epochs"], results["common"]["steps_per_epoch"]) == (2, 2)
    assert list(results["runs"]) == bench.DEFAULT_VARIANTS
    assert results["variants"] == {n: bench.VARIANTS[n] for n in bench.DEFAULT_VARIANTS}
    for name, rows in results["runs"].items():
        assert [row["seed"] for row in rows] == [0, 1]
        for row in rows:
            assert row["seconds"] > 0
            assert all(0.0 <= row[m] <= 1.0 for m in bench.METRICS), row
            # Recall@K grows with K.
            assert row["R@1"] <= row["R@2"] <= row["R@4"] <= row["R@8"]
        for metric in bench.METRICS:
            values = [row[metric] for row in rows]
            assert results["summary"][name][metric]["mean"] == np.mean(values)
            assert np.isclose(results["summary"][name][metric]["std"], np.std(values, ddof=1))
    # Paired differences against the baseline, by hand: 2 seeds, t(0.975, 1) = 12.7062.
    single, dnc = (results["runs"][n] for n in bench.DEFAULT_VARIANTS)
    diffs = np.array([d["MAP@R"] - s["MAP@R"] for s, d in zip(single, dnc)])
    paired = results["differences"][bench.DEFAULT_VARIANTS[1]]["MAP@R"]
    half = 12.7062 * diffs.std(ddof=1) / np.sqrt(2)
    assert paired["mean"] == pytest.approx(diffs.mean())
    assert paired["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-4)
    assert paired["ahead"] == (paired["ci95"][0] > 0)
    # One run folder and one record per variant and seed.
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 4
    records = sorted(p.name for p in (tmp_path / "dnc.runs").glob("*.json"))
    assert records == ["dnc-k-4-fixed-s0.json", "dnc-k-4-fixed-s1.json",
                       "single-k-1-s0.json", "single-k-1-s1.json"]
    table = out.with_suffix(".md").read_text()
    for name in bench.DEFAULT_VARIANTS:
        mean = results["summary"][name]["R@1"]["mean"]
        assert f"| {name} | {mean:.3f} ± " in table
    assert f"{bench.DEFAULT_VARIANTS[1]} - single (K=1), MAP@R: {paired['mean']:+.3f}" in table

    # A second sitting with one more seed runs only seed 2: seeds 0 and 1 are recorded.
    for record in (tmp_path / "dnc.runs").glob("*-s0.json"):
        record.write_text(record.read_text().replace('"seconds":', '"seconds": 0.0, "was":'))
    argv = ["--tiny", "--data-dir", str(omniglot_replica), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out), "--seeds", "3"]
    bench.main(argv)
    again = read_results(out, "bench_dnc", *argv)
    assert [r["seed"] for r in again["runs"]["single (K=1)"]] == [0, 1, 2]
    assert again["runs"]["single (K=1)"][0]["seconds"] == 0.0  # read back, not re-run
    assert again["runs"]["single (K=1)"][1] == results["runs"]["single (K=1)"][1]


def test_bench_dnc_default_out_follows_dataset_and_variants():
    bench = load_script("bench_dnc")
    results = BENCHMARKS / "results"

    def out(*argv):
        return bench.parse_args(list(argv)).out

    assert out() == str(results / "omniglot_dnc.json")
    assert out("--dataset", "glyphs") == str(results / "glyphs_dnc.json")
    ablation = out("--variants", "DnC K=4 learned", "DnC K=8 fixed")
    single = out("--variants", "single (K=1), learned mask")
    glyphs_single = out("--dataset", "glyphs", "--variants", "single (K=1), learned mask")
    names = {out(), out("--dataset", "glyphs"), ablation, single, glyphs_single}
    assert len(names) == 5
    assert single == str(results / "omniglot_single-k-1-learned-mask.json")
    # --tiny never writes over a published file; --out wins; a bare name goes to results/.
    assert out("--tiny") == str(results / "tiny" / "omniglot_dnc.json")
    assert out("--out", "omniglot_ablation") == str(results / "omniglot_ablation.json")
    assert out("--out", "x/y.json") == "x/y.json"


def test_looks_widen_the_interval_the_verdict_reads():
    bench = load_script("bench_dnc")

    def runs(map_at_r):
        return [{"seed": s, **{m: 0.5 for m in bench.METRICS}, "MAP@R": v}
                for s, v in enumerate(map_at_r)]

    # Differences 0.03, 0.05, 0.07: the 95% interval's lower end is just above 0 (t = 4.303,
    # half-width 0.0497); after two looks the 97.5% one (t = 6.205) reaches below it.
    both = {"A": runs([0.5, 0.5, 0.5]), "B": runs([0.53, 0.55, 0.57])}
    once = bench.summarise(both, "A")[1]["B"]["MAP@R"]
    twice = bench.summarise(both, "A", looks=2)[1]["B"]["MAP@R"]
    assert once["ahead"] and once["ci95"][0] > 0
    assert not twice["ahead"] and twice["interval"][0] < 0 < twice["ci95"][0]
    with pytest.raises(SystemExit):
        bench.parse_args(["--looks", "0"])


def test_recipe_variants_are_each_familys_choice_of_a_search(tmp_path):
    bench = load_script("bench_dnc")
    chosen = {"dnc": {"epochs": 80, "learners": 4, "margin": 0.2, "eval_every": 4},
              "single": {"epochs": 40, "learners": 1, "subspaces": "learned", "eval_every": 2}}
    search = {"dataset": "omniglot",
              "families": {family: {"chosen": {"trial": 3, "settings": settings}}
                           for family, settings in chosen.items()}}
    (tmp_path / "recipe_search_omniglot.json").write_text(json.dumps(search))
    bases = {
        "omniglot recipe, DnC": {"epochs": 80, "learners": 4, "margin": 0.2},
        "omniglot recipe, single learner": {"epochs": 40, "learners": 1,
                                            "subspaces": "learned"},
        "omniglot recipe, DnC with one learner": {"epochs": 80, "learners": 1, "margin": 0.2}}
    variants = bench.recipe_variants(str(tmp_path))
    assert {name: variants[name] for name in bases} == bases
    # Each of the papers' options on each of the three, nothing else changed.
    assert variants["omniglot recipe, DnC, backbone lr 0 on re-clustering"] == \
        {"epochs": 80, "learners": 4, "margin": 0.2, "freeze_backbone_on_recluster": True}
    assert variants["omniglot recipe, single learner, per-block inference"] == \
        {"epochs": 40, "learners": 1, "subspaces": "learned", "inference_embedding": "masked"}
    margin = {"epochs": 80, "learners": 4, "margin": 0.2, "loss": "margin"}
    assert variants["omniglot recipe, DnC, margin loss"] == margin
    assert variants["omniglot recipe, DnC, margin loss, learned beta"] == {**margin,
                                                                          "learn_beta": True}
    assert variants["omniglot recipe, DnC with one learner, margin loss, learned beta"] == {
        **margin, "learn_beta": True, "learners": 1}
    # ... and batch renormalisation, alone and with the fast re-clustering.
    assert variants["omniglot recipe, DnC, renorm, walk, training features"] == {
        "epochs": 80, "learners": 4, "margin": 0.2, "normalization": "renorm",
        "batch_order": "walk", "recluster_features": "training"}
    options = len(bench.PAPERS_OPTIONS) + len(bench.NORMALIZATION_OPTIONS)
    assert len(variants) == len(bases) * (1 + options) + 3


def test_raw_pixels_are_a_row_paired_by_seed_from_each_runs_record(tmp_path):
    bench = load_script("bench_dnc")
    out = str(tmp_path / "digits.json")
    name = "digits settings, DnC"
    pixels = {seed: {m: 0.5 + seed / 10 + i / 100 for i, m in enumerate(bench.METRICS)}
              for seed in (0, 1)}
    for seed, values in pixels.items():
        path = bench.record_path(out, name, seed)
        (tmp_path / "digits.runs").mkdir(exist_ok=True)
        with open(path, "w") as f:
            json.dump({"seed": seed, "raw_pixels": {**values, "R-precision": 0.0}}, f)
    runs = [{"seed": seed, "R@1": 0.1} for seed in pixels]
    assert bench.raw_pixel_runs(name, runs, out) == [
        {"seed": seed, "seconds": 0.0, **values} for seed, values in pixels.items()]
    # Paired like any variant: the difference per seed is pixels minus the run's.
    summary, differences = bench.summarise(
        {name: [{"seed": s, "seconds": 1.0, **{m: 0.4 for m in bench.METRICS}} for s in pixels],
         bench.RAW_PIXELS: bench.raw_pixel_runs(name, runs, out)}, name)
    assert differences[bench.RAW_PIXELS]["R@1"]["mean"] == pytest.approx(
        np.mean([pixels[s]["R@1"] - 0.4 for s in pixels]))
    # A record from before runs kept their raw pixels is named, not read as zeros.
    with open(bench.record_path(out, name, 1), "w") as f:
        json.dump({"seed": 1}, f)
    with pytest.raises(SystemExit, match="s1.json has no raw_pixels"):
        bench.raw_pixel_runs(name, runs, out)


def test_digits_variants_are_its_settings_and_the_folder_recipe_with_its_learners():
    from dnc_keras.training.config import TrainConfig
    from dnc_keras.training.presets import load_preset

    bench = load_script("bench_dnc")
    digits = TrainConfig.resolve(dataset="digits")
    dnc = bench.VARIANTS["digits settings, DnC"]
    assert (dnc["learners"], dnc["epochs"]) == (digits.learners, digits.epochs)
    assert bench.VARIANTS["digits settings, single learner"] == {**dnc, "learners": 1}
    folder = bench.VARIANTS["folder recipe, K = 2"]
    recipe = load_preset("folder")
    assert {k: v for k, v in folder.items() if k in recipe and k != "learners"} == \
        {k: v for k, v in recipe.items() if k not in ("dataset", "learners")}
    # Each runs the route dnc-keras train takes by default, not the records' older defaults.
    for settings in (dnc, folder):
        assert (settings["normalization"], settings["batch_order"],
                settings["recluster_features"]) == (digits.normalization, digits.batch_order,
                                                    digits.recluster_features)
