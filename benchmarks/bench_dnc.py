"""DnC against the single-learner baseline on Omniglot, at equal gradient steps, over seeds.

    python benchmarks/bench_dnc.py --data-dir images_background_small1
        # -> benchmarks/results/omniglot_dnc.json (+ .md), 5 seeds per variant
    python benchmarks/bench_dnc.py --dataset glyphs --epochs 10
        # -> benchmarks/results/glyphs_dnc.json (+ .md)
    python benchmarks/bench_dnc.py --variants "single (K=1)" "DnC K=4 learned" "DnC K=8 fixed" \
        --out benchmarks/results/omniglot_ablation.json
    python benchmarks/bench_dnc.py --dataset digits --raw-pixels --baseline "digits settings, \
        single learner" --variants "digits settings, single learner" "digits settings, DnC" \
        "folder recipe, K = 2"      # the pipeline's smoke test, against the raw pixels
    python benchmarks/bench_dnc.py --tiny --data-dir OMNIGLOT_LIKE_FOLDER    # seconds

Omniglot: classes sorted by name, first half trains, second half (unseen characters) tests;
glyphs: the main job's data and settings; digits: digits 0-4 train, 5-9 test. Every variant
uses the same Conv-4, embedding size, loss, epochs and steps per epoch; only the DnC settings
differ. Seeds are independent (each draws its own batches, initialisation and k-means seeds
from its own streams), and every variant runs the same seeds, so each variant is compared with
`--baseline` (the single learner) on paired differences: the mean difference over the seeds
and its 95% Student-t interval; a variant is "ahead" when the whole interval lies above 0.

Each run writes a record (`<results stem>.runs/<variant>-s<seed>.json`: settings, metrics,
seconds, provenance) as soon as it ends, and a run whose record holds the same settings is not
run again, so a long table can be built over several sittings (`--first-seed`, `--seeds`); a
killed run resumes from its run folder. Prints a table and writes it beside the results (.md).
The default `--out` follows the dataset and the variants, so runs of different variants never
overwrite each other: `<dataset>_dnc.json` for the default variants, `<dataset>_<variants>.json`
otherwise, `_loss-<loss>` added for another --loss (see `default_out`). `--tiny` (the test
suite's mode): 2 seeds of 2 epochs of 2 steps, no plots, into benchmarks/results/tiny/.
"""

import argparse
import glob
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common as bench_common  # noqa: E402

from dnc_keras.training import job  # noqa: E402
from dnc_keras.training.config import TrainConfig  # noqa: E402
from dnc_keras.training.run_folder import RunFolder  # noqa: E402
from dnc_keras_cli.options import BY_NAME  # noqa: E402

# name -> settings that differ from the common ones
VARIANTS = {
    "single (K=1)": dict(learners=1),
    "DnC K=4 fixed": dict(learners=4, subspaces="fixed"),
    "DnC K=4 learned": dict(learners=4, subspaces="learned"),
    "DnC K=8 fixed": dict(learners=8, subspaces="fixed"),
    "DnC K=4 fixed, embedding": dict(learners=4, subspaces="fixed", cluster_on="embedding"),
    "DnC K=4 fixed, no division": dict(learners=4, subspaces="fixed", progressive=False),
    # Re-clustering on the features of the train steps (FeatureBank) instead of a full pass.
    "DnC K=4 fixed, training features": dict(learners=4, subspaces="fixed",
                                             recluster_features="training"),
    # One learner with one learned mask: does the gain of learned masks need the division?
    "single (K=1), learned mask": dict(learners=1, subspaces="learned"),
    # K = 4 from the first epoch and CVPR's conquer (per-block-normalised concatenation,
    # batches from all the data): the settings that put a prototype's DnC ahead (issue 14).
    "DnC K=4 fixed, no division, cvpr conquer": dict(learners=4, subspaces="fixed",
                                                     progressive=False, conquer_mode="cvpr"),
    # One learner drawing its batches as the walk does (each class's images without
    # replacement): separates what the batch order brings from what the division brings.
    "single (K=1), walk": dict(learners=1, batch_order="walk"),
    # Each cluster walked without replacement, re-clustered with the papers' full pass:
    # separates what the walk brings from what the train steps' features bring.
    "DnC K=4 fixed, walk": dict(learners=4, subspaces="fixed", batch_order="walk"),
    # What `dnc-keras train --dataset omniglot` trained before it had a recipe: the CLI's
    # defaults (tuned for the glyphs), 10 epochs.
    "CLI defaults before the recipe": dict(learners=4, subspaces="fixed", epochs=10),
    # Each cluster walked without replacement, re-clustered on the train steps' features.
    "DnC K=4 fixed, walk, training features": dict(learners=4, subspaces="fixed",
                                                   batch_order="walk",
                                                   recluster_features="training"),
    # Conv-4 with batch renormalisation: one-cluster batches normalised by the moving
    # statistics, as inference is (issue 13: the train steps' features then stand in for a
    # full pass; issue 14: learners train on the features they are evaluated on).
    "DnC K=4 fixed, renorm": dict(learners=4, subspaces="fixed", normalization="renorm"),
    "DnC K=4 fixed, renorm, walk, training features": dict(
        learners=4, subspaces="fixed", normalization="renorm", batch_order="walk",
        recluster_features="training"),
    "single (K=1), renorm": dict(learners=1, normalization="renorm"),
    # The papers' epoch (K x the largest cluster's batches) and division after a fresh k-means
    # at the current K, each on the progressive DnC with renorm (the recipes start at K = 8, so
    # they never divide): issue 14's papers' schedule.
    "DnC K=4 fixed, renorm, papers' epoch": dict(learners=4, subspaces="fixed",
                                                 normalization="renorm", epoch_length="largest",
                                                 steps_per_epoch=None),
    "DnC K=4 fixed, renorm, fresh k-means before division": dict(
        learners=4, subspaces="fixed", normalization="renorm", recluster_before_divide=True),
    # TPAMI's L2 on the learned masks (its weight_decay x 1), against learned masks without.
    "DnC K=4 learned, renorm": dict(learners=4, subspaces="learned", normalization="renorm"),
    "DnC K=4 learned, renorm, mask weight decay": dict(
        learners=4, subspaces="learned", normalization="renorm", mask_weight_decay=1e-4),
}


def recipe_variants(results_dir=os.path.join(HERE, "results")):
    """"<dataset> recipe, DnC" and "<dataset> recipe, single learner": each family's choice in
    a committed recipe search (benchmarks/search_recipe.py, recipe_search_<dataset>.json), the
    settings it drew without the search's own (validation classes, evaluation schedule); and
    "<dataset> recipe, DnC with one learner": the DnC recipe with K = 1, everything else equal,
    the ablation that isolates what the division brings; and each of those three with each of
    the papers' options (`PAPERS_OPTIONS`) and batch renormalisation (`NORMALIZATION_OPTIONS`),
    to tell what an option brings to DnC from what it brings to any learner; and the DnC recipe
    with the margin loss, its beta fixed or learned, the latter also with K = 1."""
    variants = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "recipe_search_*.json"))):
        with open(path) as f:
            search = json.load(f)
        for family, label in (("dnc", "DnC"), ("single", "single learner")):
            chosen = dict(search["families"][family]["chosen"]["settings"])
            chosen.pop("eval_every", None)
            variants[f"{search['dataset']} recipe, {label}"] = chosen
        dnc = variants[f"{search['dataset']} recipe, DnC"]
        variants[f"{search['dataset']} recipe, DnC with one learner"] = {**dnc, "learners": 1}
        bases = {label: variants[f"{search['dataset']} recipe, {label}"]
                 for label in ("DnC", "single learner", "DnC with one learner")}
        for option, settings in {**PAPERS_OPTIONS, **NORMALIZATION_OPTIONS}.items():
            for label, base in bases.items():
                variants[f"{search['dataset']} recipe, {label}, {option}"] = {**base, **settings}
        # The margin loss's learned beta, against the same loss with beta fixed (the recipe's
        # loss, batch-hard triplets, has no beta).
        margin = {**dnc, "loss": "margin", "margin": 0.2}
        variants[f"{search['dataset']} recipe, DnC, margin loss"] = margin
        variants[f"{search['dataset']} recipe, DnC, margin loss, learned beta"] = {
            **margin, "learn_beta": True}
        # ... and with K = 1, everything else equal: what the division brings with that loss.
        variants[f"{search['dataset']} recipe, DnC with one learner, margin loss, learned "
                 "beta"] = {**margin, "learn_beta": True, "learners": 1}
    return variants


# The papers' schedule options (issue 14, item 3), each measured on a recipe against it.
PAPERS_OPTIONS = {
    "per-block inference": dict(inference_embedding="masked"),  # CVPR's test-time embedding
    "backbone lr 0 on re-clustering": dict(freeze_backbone_on_recluster=True),  # TPAMI
}
# Batch renormalisation, alone and with the fast re-clustering it makes comparable to a full
# pass (the walk, re-clustering on the train steps' features): issues 13 and 14.
NORMALIZATION_OPTIONS = {
    "renorm": dict(normalization="renorm"),
    "renorm, walk, training features": dict(normalization="renorm", batch_order="walk",
                                            recluster_features="training"),
}


VARIANTS.update(recipe_variants())
# The current default route, named where a variant must say it: batch renormalisation, the walk
# and re-clustering on the train steps' features (what `dnc-keras train` trains a Conv-4 with).
FAST_ROUTE = NORMALIZATION_OPTIONS["renorm, walk, training features"]


def digits_variants():
    """Digits (5 training classes, no search possible): "digits settings, DnC", what
    `dnc-keras train --dataset digits` trains (dnc_keras/presets/digits.yaml: the defaults with
    K = 2); the same with one learner; and "folder recipe, K = 2": the recipe carried over to
    data no search saw (presets/folder.yaml), with the most learners digits allow."""
    from dnc_keras.training.presets import load_preset

    defaults = {key: value for key, value in load_preset("digits").items() if key != "dataset"}
    folder = {key: value for key, value in load_preset("folder").items() if key != "dataset"}
    dnc = {"epochs": BY_NAME["epochs"].default, **defaults, **FAST_ROUTE}
    return {"digits settings, DnC": dnc,
            "digits settings, single learner": {**dnc, "learners": 1},
            "folder recipe, K = 2": {**folder, **FAST_ROUTE, "learners": defaults["learners"]}}


VARIANTS.update(digits_variants())
RAW_PIXELS = "raw pixels (no training)"
# The variants and the recipe searches were defined and measured with the defaults of their
# time, since changed: BatchNorm (the Conv-4's default until batch renormalisation), and the
# full pass with random batches (the re-clustering default until the fast route). A variant
# that does not set one of these keeps the value it was measured with, and a record written
# before the option existed (which does not hold it) counts at that value.
MEASURED_DEFAULTS = {"normalization": "batch", "recluster_features": "pass",
                     "batch_order": "random"}
METRICS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI")
PAIRED_METRICS = ("R@1", "MAP@R", "NMI")
DEFAULT_VARIANTS = list(VARIANTS)[:2]


def default_out(dataset, variants, loss="triplet_hard"):
    """The results file name of a run: `<dataset>_dnc.json` for the default variants (the
    README's Omniglot and glyphs tables), else `<dataset>_<slug of each variant>.json`; with
    another loss than the default, `_loss-<loss>` before the extension."""
    if list(variants) == DEFAULT_VARIANTS:
        name = f"{dataset}_dnc"
    else:
        name = f"{dataset}_" + "+".join(_slug(v) for v in variants)
    return name + ("" if loss == "triplet_hard" else f"_loss-{loss}") + ".json"


def parse_args(argv=None):
    """The arguments, `--tiny`'s settings applied and `out` resolved to the results path."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["omniglot", "glyphs", "digits"],
                        default="omniglot")
    parser.add_argument("--data-dir", default=os.environ.get("DNC_OMNIGLOT_DIR"),
                        help="Omniglot's images_background_small1 folder (default: the "
                        "DNC_OMNIGLOT_DIR variable, as the tests read it)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="independent seeds per variant (default: 5; --tiny: 2)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--looks", type=int, default=1,
                        help="times this comparison's results were looked at before its seeds "
                        "were final, this one included (2 for a table extended after its first "
                        "result): the verdict then reads the interval at 1 - 0.05 / looks "
                        "(default: 1)")
    parser.add_argument("--baseline", default="single (K=1)", choices=list(VARIANTS),
                        help="the variant every other is compared with, paired by seed")
    parser.add_argument("--also-against", nargs="+", default=[], choices=list(VARIANTS),
                        metavar="VARIANT", help="more baselines: every other variant's paired "
                        "differences against each of them too")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="triplet_hard")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                        choices=list(VARIANTS), metavar="VARIANT",
                        help=f"any of {list(VARIANTS)}")
    parser.add_argument("--raw-pixels", action="store_true",
                        help=f"add the row {RAW_PIXELS!r}: the test images' pixels as the "
                        "embedding, which every run evaluates beside its model, paired by seed")
    parser.add_argument("--runs-dir", default=None,
                        help="folder of the run folders (default: runs/bench_<dataset>)")
    bench_common.add_out_argument(
        parser, "omniglot_dnc.json", note=" for omniglot with the default variants, "
        "glyphs_dnc.json for glyphs, <dataset>_<variants>.json for other variants")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (2 if args.tiny else 5)
    if args.looks < 1:
        parser.error(f"--looks must be at least 1. Received: {args.looks}")
    if args.tiny:
        args.epochs = 2
    args.out = bench_common.resolve_out(
        args.out, default_out(args.dataset, args.variants, args.loss), args.tiny)
    return args


def record_path(out, name, seed):
    """Where the record of one run goes: beside the results file, in `<results stem>.runs/`."""
    return os.path.join(os.path.splitext(out)[0] + ".runs", f"{_slug(name)}-s{seed}.json")


def run_once(name, seed, common, runs_dir, out):
    """One variant and seed: its record if one was written with these settings, else the run
    (a killed run resumes from its folder), recorded."""
    path = record_path(out, name, seed)
    settings = {**MEASURED_DEFAULTS, **common, **VARIANTS[name], "seed": seed}
    record = recorded(path, settings)
    if record is not None:
        return record, True
    result, seconds = train(settings, os.path.join(runs_dir, f"{_slug(name)}-s{seed}"))
    record = {"variant": name, "seed": seed, "settings": settings, "seconds": round(seconds, 1),
              **result["test"], "provenance": bench_common.provenance()}
    if "raw_pixels" in result:
        record["raw_pixels"] = result["raw_pixels"]
    if "margin_betas" in result:  # learned (--learn-beta): learners' first, the conquered last
        record["margin_betas"] = result["margin_betas"]
    bench_common.write_atomic(path, json.dumps(record, indent=2) + "\n")
    return record, False


def raw_pixel_runs(name, runs, out):
    """The raw-pixel baseline of each of `name`'s runs, from its record, as runs of a variant
    (0 seconds): the same test images, so its paired differences read as any variant's."""
    rows = []
    for run in runs:
        with open(record_path(out, name, run["seed"])) as f:
            pixels = json.load(f).get("raw_pixels")
        if pixels is None:
            sys.exit(f"{record_path(out, name, run['seed'])} has no raw_pixels (recorded before "
                     "runs kept them): run without --raw-pixels, or record that run again")
        rows.append({"seed": run["seed"], "seconds": 0.0, **{m: pixels[m] for m in METRICS}})
    return rows


def recorded(path, settings):
    """The record at `path` if it was written with these settings, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if _comparable(record["settings"]) == _comparable(settings) else None


def train(settings, out_dir):
    """(job.run's results, seconds) of a run of `settings` in `out_dir`: a killed run resumes
    from it; a finished or other run there is from an earlier sitting and is replaced."""
    config = TrainConfig(**{**settings, "out": out_dir})
    start = time.perf_counter()
    folder = RunFolder(out_dir)
    overwrite = folder.state == "finished" or bool(folder.differences(config.to_dict()))
    return job.run(config, verbose=0, overwrite=overwrite), time.perf_counter() - start


def _comparable(settings):
    """Settings that decide a run: the data folder's location on one machine does not; a
    record without `normalization` was a BatchNorm run, one without the re-clustering settings
    a full-pass run with random batches (`MEASURED_DEFAULTS`)."""
    return {**MEASURED_DEFAULTS, **{k: v for k, v in settings.items() if k != "data_dir"}}


def summarise(runs, baseline, looks=1):
    """Mean and std per variant and metric; paired differences of each variant against
    `baseline` (same seeds, so the same data order), with 95% intervals (and, after several
    looks, the wider ones the verdict reads: `bench_common.paired`)."""
    summary = {name: {m: {"mean": float(np.mean([r[m] for r in rs])),
                          "std": float(np.std([r[m] for r in rs], ddof=1)) if len(rs) > 1
                          else 0.0}
                      for m in METRICS} for name, rs in runs.items()}
    differences = {}
    if baseline in runs:
        base = runs[baseline]
        for name, rs in runs.items():
            if name == baseline:
                continue
            differences[name] = {}
            for metric in PAIRED_METRICS:
                diff = bench_common.paired({r["seed"]: r[metric] for r in base},
                                           {r["seed"]: r[metric] for r in rs}, metric, looks)
                if diff:
                    low, high = bench_common.verdict_interval(diff)
                    diff["ahead"], diff["behind"] = low > 0, high < 0
                differences[name][metric] = diff
    return summary, differences


def main(argv=None):
    args = parse_args(argv)
    runs_dir = args.runs_dir or os.path.join("runs", f"bench_{args.dataset}")
    common = dict(epochs=args.epochs, loss=args.loss, embedding_dim=128, classes_per_batch=20,
                  samples_per_class=4, recluster_period=2, conquer_fraction=0.2)
    if args.dataset == "omniglot":
        if not args.data_dir or not os.path.isdir(args.data_dir):
            sys.exit(f"Omniglot not found at {args.data_dir}: pass --data-dir (the folder "
                     "images_background_small1 of github.com/brendenlake/omniglot)")
        common.update(dataset="omniglot", data_dir=os.path.abspath(args.data_dir),
                      image_size=28, steps_per_epoch=17)  # 1,360 training images // 80
    elif args.dataset == "digits":
        common.update(dataset="digits")
    if args.tiny:
        common.update(steps_per_epoch=2, plots=False)
    runs = {}
    for name in args.variants:
        runs[name] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            record, reused = run_once(name, seed, common, runs_dir, args.out)
            runs[name].append({k: record[k] for k in ("seed", "seconds", *METRICS)})
            print(f"{name:28s} seed {seed}: " + " ".join(f"{m} {record[m]:.3f}"
                                                        for m in METRICS)
                  + (" (recorded)" if reused else ""), flush=True)
    if args.raw_pixels:
        runs[RAW_PIXELS] = raw_pixel_runs(args.variants[0], runs[args.variants[0]], args.out)
    summary, differences = summarise(runs, args.baseline, args.looks)
    also = {b: summarise(runs, b, args.looks)[1] for b in args.also_against
            if b != args.baseline}
    table = "\n".join([_table(summary, differences, args.baseline)]
                      + [_table(None, d, b) for b, d in also.items()])
    print(table)
    bench_common.write_results(
        {"command": bench_common.command_line(__file__, argv), "common": common,
         "variants": {n: VARIANTS[n] for n in args.variants}, "baseline": args.baseline,
         "looks": args.looks, "runs": runs,
         "summary": summary, "differences": differences, "also_against": also},
        args.out, argv, __file__)
    bench_common.write_atomic(os.path.splitext(args.out)[0] + ".md", table + "\n")
    return args.out


def _table(summary, differences, baseline):
    """Mean ± std per variant (none when `summary` is None), then each paired difference."""
    lines = [] if summary is None else ["| variant (mean ± std) | " + " | ".join(METRICS) + " |",
                                        "|---|" + "---|" * len(METRICS)]
    for name, s in (summary or {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}"
                                                for m in METRICS) + " |")
    for name, diffs in differences.items():
        for metric, d in diffs.items():
            if d:
                verdict = "ahead" if d["ahead"] else "behind" if d["behind"] else "not ahead"
                adjusted = (f"; {d['confidence']:.1%} after {d['looks']} looks: "
                            f"{d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}"
                            if "interval" in d else "")
                lines.append(f"\n{name} - {baseline}, {metric}: {d['mean']:+.3f} (paired 95% "
                             f"interval {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}{adjusted}, "
                             f"{len(d['seeds'])} seeds): {verdict}")
    return "\n".join(lines)


def _slug(name):
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name)).strip("-").lower()


if __name__ == "__main__":
    main()
