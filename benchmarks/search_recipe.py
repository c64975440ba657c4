"""Recipe search on held-out training classes: random search at a fixed, logged budget.

    python benchmarks/search_recipe.py --data-dir images_background_small1   # omniglot
        # -> benchmarks/results/recipe_search_omniglot.json (+ .md, + .runs/), 2 x 12 trials
    python benchmarks/search_recipe.py --dataset glyphs
    python benchmarks/search_recipe.py --dataset folder --data-dir MY_FOLDER \
        --write-recipe my_recipe.yaml      # your own classes; then: dnc-keras train --config
    python benchmarks/search_recipe.py --tiny --data-dir OMNIGLOT_LIKE_FOLDER   # seconds

Issue 14: each dataset's recommended settings come from a search on validation classes, never
the test classes, with a fixed budget (at most 40 runs per dataset), frozen before any test-class
run. Two families get the same budget, so that DnC is compared with a single learner tuned as
hard:
- "dnc": K of 2, 4 or 8 learners and the DnC schedule's options (`SPACE_DNC`);
- "single": one learner, a fixed block or one learned mask (`SPACE_SINGLE`);
both over the same shared settings (`SPACE_SHARED`: epochs, learning rate, loss and margin,
embedding size, augmentation). Each family draws `--budget` distinct trials at random (seeded
by `--search-seed` and the family). A trial trains on the training classes minus a held-out
quarter (`validation_classes`), keeps its epoch with the best validation MAP@R, and never
evaluates the test classes (`test_evaluation=False`). Every trial runs with the same seed.

Each trial's record (settings, validation MAP@R and R@1 at its chosen epoch, the validation
curve, seconds, provenance) is written as the trial ends in `<results stem>.runs/`, and a
recorded trial is not run again, so a search can be spread over several sittings. The results
file lists every trial, best first within each family, and each family's choice: the trial with
the highest validation MAP@R. Committing that file freezes the search; the test classes are
first seen by `benchmarks/bench_dnc.py`'s comparison of the chosen recipes.

A second stage (`REFINE`) tries the options added after the random search had frozen (TPAMI's
backbone learning rate 0 on re-clustering epochs) on each family's choice: every value of the
option on the same validation classes, with `REFINE_SEEDS` seeds each (the choice's own trial is
the first value's seed 0, reused). The rule, fixed before it ran: a family keeps the value with
the highest mean validation MAP@R over those seeds; the default wins ties. The family's
`recipe` is its choice with the values kept. Each family gets the same runs, and the random
search and this stage together stay within issue 14's 40 runs per dataset.
`--tiny` (the test suite's mode): 2 trials per family of 2 epochs of 2 steps, the second
stage at seed 0 alone, into benchmarks/results/tiny/.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common as bench_common  # noqa: E402
import report  # noqa: E402

from bench_dnc import MEASURED_DEFAULTS, recorded, train  # noqa: E402

# Epochs per dataset, scaled to the same steps: with a quarter of the training classes held out,
# an Omniglot epoch is 12 steps of 20 x 4 and a glyphs epoch 30 (`train --dry-run` prints both),
# so both draw 480, 960 or 1,440 steps (the most near issue 14's 10 CPU minutes).
# A folder of any size gets the glyphs' 30 steps per epoch (`DATASETS`), so the same steps too.
EPOCHS = {"omniglot": (40, 80, 120), "glyphs": (16, 32, 48), "folder": (16, 32, 48)}
# What each trial draws, one value per key, uniformly. "loss" pairs a loss with its margin (the
# margin loss's alpha): the field's usual values for batch-hard triplets and Wu et al.'s 0.2.
SPACE_SHARED = {
    "epochs": EPOCHS["omniglot"],  # each dataset's own: `shared_space`
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "loss": (("triplet_hard", 0.1), ("triplet_hard", 0.2), ("margin", 0.2)),
    "embedding_dim": (64, 128),
    "augment": (False, True),
}
SPACE_DNC = {
    "learners": (2, 4, 8),
    "subspaces": ("fixed", "learned"),
    "progressive": (True, False),
    "conquer_mode": ("tpami", "cvpr"),
    "recluster_period": (1, 2, 4),
}
SPACE_SINGLE = {"learners": (1,), "subspaces": ("fixed", "learned")}
FAMILIES = {"dnc": SPACE_DNC, "single": SPACE_SINGLE}
BUDGET = 12  # per family: 24 trials per dataset
# The second stage: options tried on each family's choice, the default value first.
REFINE = {"freeze_backbone_on_recluster": (False, True)}
REFINE_SEEDS = (0, 1, 2, 3)
MAX_RUNS = 40  # per dataset, issue 14's cap
VALIDATION_CLASSES = 0.25
# Settings of every trial: the package's Conv-4 defaults otherwise.
FIXED = {"validation_classes": VALIDATION_CLASSES, "test_evaluation": False, "nmi": False,
         "plots": False, "classes_per_batch": 20, "samples_per_class": 4, "seed": 0}
DATASETS = {"omniglot": {"dataset": "omniglot", "image_size": 28}, "glyphs": {"dataset": "glyphs"},
            "folder": {"dataset": "folder", "steps_per_epoch": 30}}
ON_DISK = ("omniglot", "folder")  # datasets read from --data-dir
EVALUATIONS_PER_TRIAL = 20
TINY = {"epochs": 2, "steps_per_epoch": 2, "eval_every": 1}  # `--tiny`'s runs


def shared_space(dataset):
    """The shared space with `dataset`'s epochs (the keys in the same order, so the same seed
    draws the same points)."""
    return {**SPACE_SHARED, "epochs": EPOCHS[dataset]}


def draw_trials(family, budget, search_seed, dataset="omniglot"):
    """`budget` distinct settings of `family`, drawn uniformly from its space and the shared
    one (with `dataset`'s epochs); the same seed draws the same trials."""
    space = {**shared_space(dataset), **FAMILIES[family]}
    rng = np.random.default_rng([search_seed, list(FAMILIES).index(family)])
    size = int(np.prod([len(values) for values in space.values()]))
    trials, seen = [], set()
    while len(trials) < min(budget, size):
        drawn = {key: values[int(rng.integers(len(values)))] for key, values in space.items()}
        key = json.dumps(drawn, sort_keys=True)
        if key not in seen:
            seen.add(key)
            trials.append(settings_of(drawn))
    return trials


def settings_of(drawn):
    """TrainConfig fields of a drawn point (the loss pair split, evaluations spread evenly)."""
    settings = dict(drawn)
    settings["loss"], settings["margin"] = drawn["loss"]
    settings["eval_every"] = max(1, drawn["epochs"] // EVALUATIONS_PER_TRIAL)
    return settings


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(DATASETS), default="omniglot")
    parser.add_argument("--data-dir", default=None,
                        help="Omniglot's images_background_small1 folder (default: the "
                        "DNC_OMNIGLOT_DIR variable, as the tests read it), or your folder of "
                        "<class>/<image> files with --dataset folder")
    parser.add_argument("--write-recipe", default=None, metavar="FILE",
                        help="also write the DnC family's recipe as YAML settings, with the "
                        "dataset and its folder, for `dnc-keras train --config FILE`")
    parser.add_argument("--budget", type=int, default=BUDGET,
                        help=f"random trials per family (default {BUDGET}; at most "
                        f"{max_budget()}, so that with the second stage's "
                        f"{refine_runs(REFINE_SEEDS)} runs per family a dataset's search stays "
                        f"within issue 14's {MAX_RUNS} runs)")
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=None,
                        help="folder of the run folders (default: runs/search_<dataset>)")
    bench_common.add_out_argument(parser, "recipe_search_omniglot.json",
                                  note=" for omniglot, recipe_search_glyphs.json for glyphs")
    args = parser.parse_args(argv)
    if args.data_dir is None and args.dataset == "omniglot":
        args.data_dir = os.environ.get("DNC_OMNIGLOT_DIR")
    if not 1 <= args.budget <= max_budget():
        parser.error(f"--budget must be in [1, {max_budget()}]. Received: {args.budget}")
    args.refine_seeds = REFINE_SEEDS
    if args.tiny:
        args.budget, args.refine_seeds = 2, REFINE_SEEDS[:1]
    args.out = bench_common.resolve_out(args.out, f"recipe_search_{args.dataset}.json",
                                        args.tiny)
    return args


def refine_runs(seeds):
    """The second stage's new runs per family: every value of every option at every seed, but
    the choice's own trial (the first option's default at seed 0)."""
    return sum(len(values) for values in REFINE.values()) * len(seeds) - 1


def max_budget():
    """The most random trials per family that keep a dataset's search within `MAX_RUNS`."""
    return (MAX_RUNS // len(FAMILIES)) - refine_runs(REFINE_SEEDS)


def run_trial(family, index, settings, common, runs_dir, out, name=None):
    """One trial (or a second-stage run, `name`d): its record if one holds these settings, else
    the run, recorded."""
    name = name or f"{family}-{index:02d}"
    path = os.path.join(os.path.splitext(out)[0] + ".runs", f"{name}.json")
    settings = {**MEASURED_DEFAULTS, **common, **settings}
    record = recorded(path, settings)
    if record is not None:
        return record, True
    result, seconds = train(settings, os.path.join(runs_dir, name))
    assert "test" not in result, "a search trial evaluated the test classes"
    selection = result["selection"]
    chosen = next(h for h in selection["history"] if h["epoch"] == selection["epoch"])
    record = {"family": family, "trial": index, "settings": settings,
              "validation": {"MAP@R": selection["value"], "R@1": chosen["R@1"],
                             "epoch": selection["epoch"]},
              "curve": [{"epoch": h["epoch"], "MAP@R": h["MAP@R"]} for h in selection["history"]],
              "seconds": round(seconds, 1), "provenance": bench_common.provenance()}
    bench_common.write_atomic(path, json.dumps(record, indent=2) + "\n")
    return record, False


def main(argv=None):
    args = parse_args(argv)
    common = {**FIXED, **DATASETS[args.dataset]}
    if args.dataset in ON_DISK:
        if not args.data_dir or not os.path.isdir(args.data_dir):
            what = ("Omniglot", "the folder images_background_small1 of github.com/"
                    "brendenlake/omniglot") if args.dataset == "omniglot" else (
                    "Your folder", "<class>/<image> files")
            where = f"at {args.data_dir}" if args.data_dir else "(no --data-dir given)"
            sys.exit(f"{what[0]} not found {where}: pass --data-dir ({what[1]})")
        common["data_dir"] = os.path.abspath(args.data_dir)
    runs_dir = args.runs_dir or os.path.join("runs", f"search_{args.dataset}")
    families = {}
    for family in FAMILIES:
        trials = draw_trials(family, args.budget, args.search_seed, args.dataset)
        records = []
        for index, settings in enumerate(trials):
            if args.tiny:
                settings = {**settings, **TINY}
            record, reused = run_trial(family, index, settings, common, runs_dir, args.out)
            records.append(record)
            print(f"{family} {index:2d}: validation MAP@R {record['validation']['MAP@R']:.3f} "
                  f"R@1 {record['validation']['R@1']:.3f} at epoch "
                  f"{record['validation']['epoch']} ({record['seconds']:.0f} s) "
                  f"{_varying(record['settings'])}" + (" (recorded)" if reused else ""),
                  flush=True)
        ranked = sorted(records, key=lambda r: -r["validation"]["MAP@R"])
        refined = refine(family, ranked[0], args.refine_seeds, common, runs_dir, args.out,
                         args.tiny)
        families[family] = {"trials": [_summary(r) for r in ranked],
                            "chosen": _summary(ranked[0]), **refined}
    results = {"dataset": args.dataset, "budget_per_family": args.budget,
               "runs": (args.budget + refine_runs(args.refine_seeds)) * len(FAMILIES),
               "search_seed": args.search_seed,
               "space": {"shared": shared_space(args.dataset), **FAMILIES},
               "refine": {"options": REFINE, "seeds": list(args.refine_seeds)},
               "fixed": common, "families": families}
    table = report.recipe_trials(families) + "\n\n" + report.recipe_refinement(families)
    print(table)
    bench_common.write_results(results, args.out, argv, __file__)
    bench_common.write_atomic(os.path.splitext(args.out)[0] + ".md", table + "\n")
    if args.write_recipe:
        write_recipe(args.write_recipe, results, args.out)
    return args.out


def write_recipe(path, results, source):
    """The DnC family's recipe as YAML settings for `dnc-keras train --config`: the dataset (and
    its folder), the trials' schedule, and the values the search chose, the source named."""
    import yaml

    fixed = results["fixed"]
    settings = {key: fixed[key] for key in ("dataset", "data_dir", "image_size",
                                              "steps_per_epoch") if key in fixed}
    settings.update({k: v for k, v in results["families"]["dnc"]["recipe"].items()
                     if k != "eval_every"})
    header = (f"# The DnC family's recipe of {os.path.basename(source)} (benchmarks/"
              "search_recipe.py): chosen on validation classes.\n")
    bench_common.write_atomic(path, header + yaml.safe_dump(settings, sort_keys=False))


def refine(family, choice, seeds, common, runs_dir, out, tiny=False):
    """The second stage on a family's `choice` (its best trial's record): each `REFINE` option in
    turn, every value at every seed on the validation classes, keeping the value with the
    highest mean validation MAP@R (the default on ties). {"refine": per option, each value's
    runs and mean, the paired difference to the default, the value kept; "recipe": the choice's
    settings with the values kept}."""
    recipe, stages = dict(_varying(choice["settings"])), {}
    for option, values in REFINE.items():
        scores = {}
        for value in values:
            scores[value] = {}
            for seed in seeds:
                if option == next(iter(REFINE)) and value == values[0] and seed == 0:
                    record = choice  # the trial itself: seed 0, every option at its default
                else:
                    settings = {**recipe, option: value, "seed": seed}
                    if tiny:
                        settings.update(TINY)
                    record, reused = run_trial(family, choice["trial"], settings, common,
                                               runs_dir, out,
                                               name=f"{family}-{option}-{value}-s{seed}")
                    print(f"{family} {option} {value} seed {seed}: validation MAP@R "
                          f"{record['validation']['MAP@R']:.3f} ({record['seconds']:.0f} s)"
                          + (" (recorded)" if reused else ""), flush=True)
                scores[value][seed] = record["validation"]["MAP@R"]
        means = {value: float(np.mean(list(s.values()))) for value, s in scores.items()}
        kept = max(values, key=lambda value: (means[value], value == values[0]))
        recipe[option] = kept
        stages[option] = {
            "values": [{"value": value, "MAP@R": scores[value], "mean": means[value]}
                       for value in values],
            "differences": {str(value): bench_common.paired(scores[values[0]], scores[value],
                                                            "MAP@R")
                            for value in values[1:]},
            "kept": kept}
    return {"refine": stages, "recipe": recipe}


def _summary(record):
    return {"trial": record["trial"], "settings": _varying(record["settings"]),
            "validation": record["validation"], "seconds": record["seconds"]}


def _varying(settings):
    """The settings a trial drew (the rest are `FIXED` and the dataset's)."""
    drawn = (set(SPACE_SHARED) | set(SPACE_DNC) | set(SPACE_SINGLE) | set(REFINE)
             | {"margin", "eval_every"})
    return {k: v for k, v in settings.items() if k in drawn}


if __name__ == "__main__":
    main()
