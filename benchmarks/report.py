"""Renders the README's and docs' tables from benchmarks/results/*.json: one source for every
published figure.

    python benchmarks/report.py           # rewrite the tables in README.md and docs/*.md
    python benchmarks/report.py --check   # exit 1, naming each table that differs

A table lives between two markers in a Markdown file:

    <!-- report: NAME [ARG ...] -->
    ...generated, do not edit by hand...
    <!-- /report -->

and `RENDERERS[NAME](*ARGS)` makes its text from the results files, ending with where they
came from (the command that wrote them, the commit, the date). tests/benchmarks/test_report.py
fails when a table in the repository differs from what this script renders, and when prose
outside the tables quotes a measured figure.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DOCUMENTS = ["README.md", "serving/README.md"] + [
    os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(REPO, "docs")))
    if name.endswith(".md")]
BLOCK = re.compile(r"(<!-- report: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /report -->)",
                   re.S)
METRICS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI")


def load(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def source(name, data):
    """The line under a table: file, command, commit, date (what the file records)."""
    provenance = data.get("provenance") or {}
    command = _local_paths(provenance.get("command") or data.get("command")
                           or "command not recorded")
    git = provenance.get("git") or {}
    commit = git.get("commit")
    commit = (f"commit {commit[:7]}" + (" + uncommitted changes" if git.get("dirty") else "")
              if commit else "commit not recorded")
    date = provenance.get("date") or data.get("date") or "date not recorded"
    return f"From `benchmarks/results/{name}`, written by `{command}` ({commit}, {date})."


def _local_paths(command):
    """The command with absolute paths outside the repository (this machine's data folders)
    shortened to their last component: the docs name no path a clone does not have; the
    results file keeps the full command."""
    def shorten(match):
        path = match.group(0)
        return path if path.startswith(REPO) else os.path.basename(path.rstrip("/"))
    return re.sub(r"(?<![\w.])/[\w./-]+", shorten, command)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# -- renderers ------------------------------------------------------------------------------

def _machine(data):
    """The machine a results file's provenance records ({} where it records none)."""
    return (data.get("provenance") or {}).get("machine") or {}


def _cpu(data):
    """ " of an <CPU model>" from a results file's provenance, or "" where it is not recorded."""
    cpu = _machine(data).get("cpu")
    return f" of an {cpu}" if cpu else ""


def main_job(name="main_job.json"):
    """`dnc-keras train` (README command 1) against raw pixels on the unseen glyphs."""
    data = load(name)
    ks = [m for m in METRICS if m in data["test"]]
    rows = [[data["label"]] + [fmt(data["test"][m]) for m in ks],
            ["raw pixels"] + [fmt(data["raw_pixels"][m]) for m in ks]]
    cpus, cpu = _machine(data).get("cpus"), _cpu(data)
    where = f" on {cpus} cores{cpu}" if cpus and cpu else ""
    return (table([f"{data['test_classes']} unseen characters"] + ks, rows)
            + f"\n\nTraining took {data['train_seconds']:.0f} s{where}, the whole command "
              f"{data['seconds']:.0f} s. " + source(name, data))


def dnc(name, *variants):
    """Mean ± std over seeds per variant of a bench_dnc results file."""
    data = load(name)
    summary = data["summary"]
    variants = variants or tuple(summary)
    seeds = {v: len(data["runs"][v]) for v in variants}
    ks = [m for m in METRICS if m in summary[variants[0]]]
    rows = [[f"{v} ({seeds[v]} seeds)"] + [f"{fmt(summary[v][m]['mean'])} ± "
                                          f"{fmt(summary[v][m]['std'])}" for m in ks]
            for v in variants]
    text = table(["variant (mean ± std)"] + ks, rows)
    against = {data.get("baseline"): data.get("differences", {}), **data.get("also_against", {})}
    shown = set()  # pairs already in a table: their reverse is the same interval negated
    for number, (baseline, found) in enumerate(against.items()):
        differences = {v: d for v, d in found.items()
                       if v in variants and (baseline, v) not in shown}
        shown |= {(v, baseline) for v in differences}
        if not differences:
            continue
        metrics = [m for m in ("R@1", "MAP@R", "NMI") if any(d.get(m) for d in
                                                             differences.values())]
        rows = [[f"{v} - {baseline}"] + [_paired_cell(d.get(m)) for m in metrics]
                for v, d in differences.items()]
        text += ((_differences_heading(data.get("looks", 1)) if number == 0
                  else f"\n\nAgainst {baseline}:")
                 + "\n\n" + table(["variant - baseline"] + metrics, rows))
    return text + "\n\n" + source(name, data)


def _differences_heading(looks):
    """The sentence above a file's first table of paired differences."""
    if looks == 1:
        return ("\n\nPaired differences against the baseline, seed by seed (mean, 95% "
                "Student-t interval; ahead or behind only when the interval excludes 0):")
    return ("\n\nPaired differences against the baseline, seed by seed (mean, 95% Student-t "
            f"interval). The seeds were extended after a look at the results, {looks} looks in "
            f"all, so each cell also gives the interval at {1 - 0.05 / looks:.1%} (Bonferroni "
            "over the looks), and ahead or behind needs that one to exclude 0:")


def _paired_cell(d):
    if not d:
        return "n/a"
    low, high = common.verdict_interval(d)
    verdict = "ahead" if low > 0 else "behind" if high < 0 else "not ahead"
    adjusted = (f"; {d['confidence']:.1%}: {low:+.3f} to {high:+.3f}" if "interval" in d
                else "")
    return (f"{d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}{adjusted}, "
            f"{len(d['seeds'])} seeds): {verdict}")


def served_omniglot(name="served_omniglot.json"):
    """What a served model retrieves against what its run measured, per seed: `before` (the
    package before the preprocessing record; its weights served through the record's path) and
    `after` (the record, SavedModel and ONNX Runtime on the raw files)."""
    data = load(name)
    runs = data["runs"]
    before = {r["seed"]: r for r in runs["before"]["rows"]}
    after = {r["seed"]: r for r in runs["after"]["rows"]}
    rows = []
    for seed in sorted(set(before) | set(after)):
        b, a = before.get(seed), after.get(seed)
        rows.append([seed] + ([fmt(b["in_run"]["MAP@R"]), fmt(b["served_now"]["MAP@R"])]
                              if b else ["", ""])
                    + ([fmt(a["in_run"]["MAP@R"]), fmt(a["served_savedmodel"]["MAP@R"]),
                        fmt(a["served_onnx"]["MAP@R"]), f"{a['parity_max_abs_diff']:.1e}"]
                       if a else ["", "", "", ""]))
    lines = [table(["seed", "before: in-run MAP@R", "before: served through the record",
                    "after: in-run", "after: SavedModel on raw files", "after: ONNX Runtime",
                    "after: parity max diff"], rows), ""]
    for diff in runs["before"].get("served_now_minus_in_run") or []:
        low, high = diff["ci95"]
        lines.append(f"Before, served through the record - in-run, {diff['metric']}: "
                     f"{diff['mean']:+.4f} (paired 95% interval {low:+.4f} to {high:+.4f}, "
                     f"{len(diff['seeds'])} seeds).")
    if after:
        worst = {runtime: max(abs(r[runtime]["MAP@R"] - r["in_run"]["MAP@R"])
                              for r in after.values())
                 for runtime in ("served_savedmodel", "served_onnx")}
        lines.append(f"After, largest |served - in-run| MAP@R over the seeds: SavedModel "
                     f"{worst['served_savedmodel']:.1e}, ONNX Runtime "
                     f"{worst['served_onnx']:.1e}.")
    before_git = runs["before"].get("package") or {}
    lines.append(f"\n`before` ran commit {str(before_git.get('commit', '?'))[:7]}, `after` "
                 f"commit {str((runs['after'].get('package') or {}).get('commit', '?'))[:7]}. "
                 + source(name, runs["after"]))
    return "\n".join(lines)


def export_fidelity(name="export_fidelity.json"):
    """In-run retrieval against the export's, per dataset, with parity."""
    from_json = load(name)
    rows = []
    for row in from_json["rows"]:
        record = row["preprocessing"]
        geometry = {"stretch": "resize", "crop": f"shorter side {record['resize_to']}, crop",
                    "pad": "pad"}[record["fit"]]
        rows.append([row["case"], f"{geometry} to {record['size'][0]}x{record['size'][1]}, "
                     f"{record['kernel']}"
                     + (", 8-bit passes" if record.get("rounding") == "uint8" else "")
                     + (", inverted" if record["invert"] else ""),
                     fmt(row["in_run"]["MAP@R"]), fmt(row["savedmodel"]["MAP@R"]),
                     fmt(row["onnx"]["MAP@R"]), fmt(row["in_run"]["R@1"]),
                     fmt(row["savedmodel"]["R@1"]),
                     f"{row['parity']['max_abs_diff']:.1e} on {row['parity']['inputs']} files"])
    return table(["dataset", "preprocessing record", "MAP@R in run", "SavedModel", "ONNX",
                  "R@1 in run", "SavedModel", "parity max diff"], rows) + "\n\n" + \
        source(name, from_json)


def distributed(name="distributed.json"):
    data = load(name)
    labels = {"loop_1 / fit_1 (time)": "custom loop / `model.fit`, 1 device",
              "loop_2 / fit_2 (time)": "custom loop / `model.fit`, 2 replicas",
              "loop_2 / loop_1 (time)": "2 replicas / 1 device, custom loop",
              "fit_2 / fit_1 (time)": "2 replicas / 1 device, `model.fit`",
              "loop_2 / loop_2_local (time): global-batch mining":
                  "global-batch mining (all-gather) / per-replica mining"}
    rows = [[label, f"{data['ratios'][key]['median']:.2f} "
                    f"({data['ratios'][key]['min']:.2f}-{data['ratios'][key]['max']:.2f})"]
            for key, label in labels.items()]
    return table(["comparison", "time ratio, median (range)"], rows) + "\n\n" + \
        source(name, data)


def inference(name="inference.json"):
    data = load(name)
    batches = sorted({r["batch"] for r in data["results"]})
    runtimes = list(dict.fromkeys(r["runtime"] for r in data["results"]))
    cell = {(r["runtime"], r["batch"]): r for r in data["results"]}
    rows = [[runtime] + [f"{cell[runtime, b]['median_ms']:.3f} ms" for b in batches]
            for runtime in runtimes]
    return table(["runtime"] + [f"batch {b}" for b in batches], rows) + "\n\n" + \
        source(name, data)


def _ratio(entry, digits=3):
    return f"{entry['median']:.{digits}f} ({entry['min']:.{digits}f}-{entry['max']:.{digits}f})"


# Written by `python benchmarks/bench_train_step.py --skip-step --out train_step_epoch_default
# --epoch-candidates dnc_epoch+renorm+bank+walk keras_epoch+renorm+walk dnc_epoch+renorm`.
DEFAULT_EPOCH_FILE = "train_step_epoch_default.json"
# Written by `python benchmarks/bench_train_step.py --skip-epoch --repeats 21 --out
# train_step_renorm_torch --candidates dnc+renorm torch_pml+renorm torch_pml+renorm@2
# torch_pml+renorm@3`.
RENORM_STEP_FILE = "train_step_renorm_torch.json"


def performance():
    """One row per hot path: what was measured against its target, from each file."""
    rows = []
    # The default route (renorm, the walk, re-clustering on the train steps' features) first,
    # then the papers' full pass, both against a plain epoch of the same network and batches.
    epoch = load(DEFAULT_EPOCH_FILE)["epoch"]
    rows.append(["DnC epoch by default (renorm, walk, train steps' features) / plain Keras "
                 "epoch, `bench_train_step.py --skip-step`",
                 _ratio(epoch["time_ratio_dnc_over_keras"]), f"<= {epoch['target']}",
                 "yes" if epoch["met"] else "no"])
    ratio = epoch["time_ratio_dnc_epoch+renorm_over_keras"]
    rows.append(["the same with the papers' full pass and random batches", _ratio(ratio),
                 f"<= {epoch['target']}", "yes" if ratio["median"] <= epoch["target"] else "no"])
    rows += [row for row in (
        _torch_step_row("train_step.json", "dnc/torch_pml", "DnC train step speed / PyTorch + "
                        "pytorch-metric-learning, BatchNorm Conv-4"),
        _torch_step_row(RENORM_STEP_FILE, "dnc+renorm/torch_pml+renorm", "the same with batch "
                        "renormalisation (the default Conv-4; PyTorch's written to match)"))
        if row]
    recluster = load("recluster.json")
    rows.append(["re-clustering share of the training between two, `bench_recluster.py`",
                 f"by default (the walk, train steps' features) up to "
                 f"{recluster['max_share_walk_bank']:.1%}; the papers' full pass up to "
                 f"{recluster['max_share']:.1%}; train steps' features with random batches up "
                 f"to {recluster['max_share_bank']:.1%}",
                 f"<= {recluster['target']:.0%}",
                 "yes" if recluster["met_walk_bank"] else "no"])
    evaluation = load("evaluation.json")
    rows.append(["`retrieval_metrics` on 60,000 x 512 / a chunked matmul, "
                 "`bench_evaluation.py`", _ratio(evaluation["ratio_to_bound"]),
                 f"<= {evaluation['target']}", "yes" if evaluation["met"] else "no"])
    pipeline = load("pipeline.json")["ratio_to_step"]
    first = next(iter(pipeline))
    rows.append([f"tf.data pipeline / train-step consumption ({first}), `bench_pipeline.py`",
                 _ratio(pipeline[first], 1), "> 1", "yes" if pipeline[first]["min"] > 1
                 else "no"])
    memory = load("memory.json")
    rows.append(["peak RSS, `bench_memory.py`", f"main job {memory['job']['peak_rss_mib']:.0f} "
                 f"MiB; {memory['recluster']['n']:,}-image re-clustering "
                 f"{memory['recluster']['peak_during_mib']:.0f} MiB", "reported", ""])
    files = [DEFAULT_EPOCH_FILE, "train_step.json", RENORM_STEP_FILE, "recluster.json",
             "evaluation.json", "pipeline.json", "memory.json"]
    return table(["hot path", "measured: median (range of rounds)", "target", "met"], rows) + \
        "\n\n" + "\n".join("- " + source(f, load(f)) for f in files)


def _torch_step_row(name, pair, label):
    """The row of a train step against its PyTorch peer (`pair`, "a/b"), the peer credited
    with its fastest process, round by round, where it ran in several; None if not measured."""
    ratios = load(name)["step"]["speed_ratios"]
    step = ratios.get(next((k for k in ratios if k.startswith(pair + " (fastest")), pair))
    if not step:
        return None
    interval = step.get("ci95")
    shown = _ratio(step) + (f"; geometric mean {step['geometric_mean']:.3f}, 95% interval "
                            f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "")
    verdict = ("yes" if interval and interval[0] >= 1 else
               "on the median" if step["median"] >= 1 else "no")
    return [f"{label} ({len(step['all'])} paired rounds), `bench_train_step.py`", shown,
            ">= 1 (interval)", verdict]


def step_ratios(name):
    """The speed ratios of one `bench_train_step.py` step file: a/b is b's time over a's,
    per interleaved round, with the rounds' geometric mean and its 95% interval."""
    data = load(name)
    step = data["step"]
    rows = []
    for pair, entry in step["speed_ratios"].items():
        interval = entry.get("ci95")
        rows.append([pair, _ratio(entry), f"{entry['geometric_mean']:.3f}" if interval else "",
                     f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "",
                     len(entry["all"])])
    ms = ", ".join(f"{n} {c['ms_per_step']:.1f} ms" for n, c in step["candidates"].items())
    return (table(["speed a / b", "median (range of rounds)", "geometric mean", "95% interval",
                   "rounds"], rows) + f"\n\nMedian step: {ms}.\n\n" + source(name, data))


def recluster_table(name="recluster.json"):
    data = load(name)
    return data["table"] + "\n\n" + source(name, data)


# What each fault case of bench_faults.py injects, and what must follow.
FAULT_CASES = {
    "mid-epoch": ("kill -9 at the end of a random training step",
                  "the same command resumes to the reference model, bit for bit"),
    "mid-re-clustering": ("kill -9 at a random time inside a division or re-clustering",
                          "the same command resumes to the reference model, bit for bit"),
    "mid-checkpoint-write": ("kill -9 at a random time inside a checkpoint save",
                             "the same command resumes to the reference model, bit for bit"),
    "checkpoint-index": ("kill -9 after a checkpoint's data, before its index",
                         "the same command resumes to the reference model, bit for bit"),
    "model-write": ("kill -9 inside the write of model.keras, before its rename",
                    "the same command resumes to the reference model, bit for bit"),
    "distributed-mid-epoch": ("kill -9 at a random step of the distributed loop "
                              "(`--strategy mirrored --checkpoint-every 2`)",
                              "the same command resumes mid-epoch to the distributed "
                              "reference model, bit for bit"),
    "nan": ("NaN weights before a random step",
            "exit 2, one line naming the epoch and step; no model.keras; the last good "
            "checkpoint kept"),
    "full-disk": ("the write of model.keras, history.json or metrics.json fails with ENOSPC",
                  "exit 2, one line naming the file; no partial or temporary file; the same "
                  "command then finishes to the reference model"),
}


def faults(name="faults.json"):
    """Each fault case of bench_faults.py: what was injected, what must follow, how often it
    did."""
    data = load(name)
    rows = []
    for case, summary in data["cases"].items():
        injected, expected = FAULT_CASES[case]
        landed = summary.get("landed_inside")
        rows.append([case, injected, expected, summary["outcome"] + " points",
                     f"{landed} inside" if landed else ""])
    return (table(["case", "injected", "expected", "as expected", "where the kill landed"],
                  rows) + "\n\n" + source(name, data))


def index(name="index.json"):
    """bench_index.py: each faiss index kind against exact search at the benchmark's size."""
    data = load(name)
    settings, target = data["settings"], data["target"]
    rows = []
    for kind, entry in data["indexes"].items():
        speedup = entry["speedup_over_flat"]
        met = (entry["recall_at_10"] >= target["recall_at_10"]
               and speedup["median"] >= target["speedup_over_flat"])
        rows.append([kind, fmt(entry["recall_at_10"]), f"{entry['qps']:,.0f}",
                     f"{speedup['median']:.1f} ({speedup['min']:.1f}-{speedup['max']:.1f})",
                     f"{entry['build_s']:.1f}", f"{entry['index_bytes'] / 2 ** 20:,.0f}",
                     ", ".join(f"{k}={v}" for k, v in entry["parameters"].items()) or "-",
                     "-" if kind == "flat" else ("yes" if met else "no")])
        if "small_pages" in entry:
            rows.append(_small_pages_row(kind, entry, settings))
    caption = (f"{settings['n']:,} gallery and {settings['queries']:,} query embeddings, "
               f"{settings['dim']}-d, {settings['classes']:,} classes (spread "
               f"{settings['spread']}), faiss on {settings['threads']} thread(s)"
               + (f" ({settings['build_threads']} to build)"
                  if settings.get("build_threads", settings["threads"]) != settings["threads"]
                  else "") + _cpu(data) + ", "
               f"{settings['repeats']} rounds (speed-up: median, min-max of the rounds). Goal: "
               f"recall@10 >= {target['recall_at_10']} at >= {target['speedup_over_flat']:g}x "
               "flat's queries per second.")
    return (caption + "\n\n" + table(
        ["index", "recall@10", "queries/s", "x flat", "build s", "MiB", "parameters",
         "goal met"], rows) + "\n\n" + source(name, data))


def _small_pages_row(kind, entry, settings):
    """The row of an index's copy on 4 KiB pages (bench_index.py times it in the same rounds
    as the index in huge pages): its speed, and the index's speed-up over it (median, min-max
    of the rounds, as the table's other ratios)."""
    small = entry["small_pages"]
    speedup, gain = small["speedup_over_flat"], small["huge_over_small_pages"]
    brought = f"huge pages: {gain['median']:.2f}x ({gain['min']:.2f}-{gain['max']:.2f})"
    return [f"{kind}, 4 KiB pages", fmt(entry["recall_at_10"]),
            f"{settings['queries'] / small['search_s']['median_s']:,.0f}",
            f"{speedup['median']:.1f} ({speedup['min']:.1f}-{speedup['max']:.1f})", "", "",
            brought, "-"]


def index_sweep(name="index.json"):
    """bench_index.py's sweep: recall and speed of IVF and HNSW at each search parameter."""
    data = load(name)
    rows = []
    for kind, entry in data["indexes"].items():
        for point in entry.get("sweep", []):
            parameter = next(k for k in point if k in ("nprobe", "efSearch"))
            rows.append([kind, f"{parameter}={point[parameter]}", fmt(point["recall_at_10"]),
                         fmt(point["top1_same_class"]), f"{point['qps']:,.0f}",
                         f"{point['speedup_over_flat']:.1f}"])
    return (f"{data['settings']['n']:,} items: each search parameter of the tuned indexes "
            f"(median of {data['settings']['repeats']} rounds each, against flat's median; `top-1 "
            "class`: how often the first item found has the query's class).\n\n"
            + table(["index", "search parameter", "recall@10", "top-1 class", "queries/s",
                     "x flat"], rows) + "\n\n" + source(name, data))


def bank_clusters(name="bank_clusters.json"):
    """bench_bank_clusters.py: per run, how far the bank's clusters are from a full pass's."""
    data = load(name)
    rows = []
    for run in data["runs"]:
        aris = [c["ari"] for c in run["comparisons"] if "ari" in c]
        seed_aris = [c["seed_ari"] for c in run["comparisons"] if "seed_ari" in c]
        embedded = [c["unseen_fraction"] for c in run["comparisons"]]
        rows.append([run["seed"], len(run["comparisons"]), fmt(statistics.median(aris)),
                     fmt(min(aris)), fmt(statistics.median(seed_aris)),
                     f"{statistics.median(embedded):.1%}", f"{max(embedded):.1%}",
                     fmt(run["test"]["R@1"]), fmt(run["test"]["MAP@R"])])
    return (table(["seed", "clusterings", "ARI bank vs full pass (median)", "ARI (min)",
                   "ARI full pass, seed vs seed (median)", "embedded afresh (median)",
                   "embedded afresh (max)", "test R@1", "test MAP@R"], rows)
            + "\n\n" + source(name, data))


def nmi(name="nmi.json"):
    """bench_nmi.py: each k-means route behind NMI at SOP's size against scikit-learn's."""
    data = load(name)
    settings, target = data["settings"], data["target"]
    rows = []
    for route, entry in data["routes"].items():
        for seed, run in entry["seeds"].items():
            difference = run["difference"]
            rows.append([route, seed, fmt(run["nmi"]), fmt(run["sklearn_nmi"]),
                         "n/a" if difference is None else f"{difference:+.3f}",
                         f"{run['seconds']:.0f}", f"{run['other_load']:.2f}",
                         "yes" if run["met"] else "no"])
    caption = (f"{settings['n']:,} embeddings of d = {settings['dim']} in "
               f"{settings['classes']:,} classes (SOP's test set's shape). Goal: under "
               f"{target['seconds']:g} s, within {target['nmi_difference']} of scikit-learn's "
               "NMI on the same data.")
    return (caption + "\n\n" + table(["route", "seed", "NMI", "scikit-learn NMI",
                                        "difference", "seconds", "others' load (cores)",
                                        "goal met"], rows) + "\n\n" + source(name, data))


def recipe_search(name):
    """search_recipe.py: every trial of a dataset's recipe search, best first per family, on the
    validation classes; the first row of each family is its choice."""
    data = load(name)
    second = data["runs"] // len(data["families"]) - data["budget_per_family"]
    caption = (f"{data['dataset']}: {data['runs']} runs ({data['budget_per_family']} random "
               "trials per family" + (f", then {second} second-stage runs each" if second else "")
               + "), each on the training classes with a quarter held out; validation "
               "MAP@R and R@1 at the run's best epoch. The test classes were not evaluated.")
    text = caption + "\n\n" + recipe_trials(data["families"])
    if any("refine" in entry for entry in data["families"].values()):
        text += ("\n\nSecond stage: each family's choice with the options added after the "
                 f"random search, on the same validation classes, seeds "
                 f"{', '.join(map(str, data['refine']['seeds']))}; the value with the higher mean "
                 "is kept.\n\n" + recipe_refinement(data["families"]))
    return text + "\n\n" + source(name, data)


def recipe_trials(families):
    """The table of a recipe search's trials (search_recipe.py prints and writes it too)."""
    rows = []
    for family, entry in families.items():
        for trial in entry["trials"]:
            drawn = ", ".join(f"{k} {v}" for k, v in trial["settings"].items()
                              if k != "eval_every")
            rows.append([family, trial["trial"], fmt(trial["validation"]["MAP@R"]),
                         fmt(trial["validation"]["R@1"]), trial["validation"]["epoch"], drawn])
    return table(["family", "trial", "validation MAP@R", "validation R@1", "epoch", "settings"],
                 rows)


def recipe_refinement(families):
    """The table of a recipe search's second stage: per family and option, each value's mean
    validation MAP@R over the seeds, its paired difference to the default, and the value kept."""
    rows = []
    for family, entry in families.items():
        for option, stage in entry.get("refine", {}).items():
            default = stage["values"][0]["value"]
            for tried in stage["values"]:
                difference = stage["differences"].get(str(tried["value"]))
                rows.append([family, option, tried["value"], len(tried["MAP@R"]),
                             fmt(tried["mean"]),
                             "" if tried["value"] == default else _paired_cell(difference),
                             "yes" if tried["value"] == stage["kept"] else "no"])
    return table(["family", "option", "value", "seeds", "mean validation MAP@R",
                  "paired difference to the default", "kept"], rows)


def _cell(text):
    """Text fit for a table cell: the run's temporary work folder and the checkout's path
    dropped (they differ between runs and clones), pipes escaped."""
    text = re.sub(r"/tmp/export_faults-\w+/", "", str(text))
    text = re.sub(r"\S*/(benchmarks/bench_\w+\.py)", r"\1", text)
    return text.replace("|", "\\|")


def export_faults(name="export_faults.json"):
    """Each case of bench_export_faults.py: the command, what was expected, what was observed;
    first the counts per group."""
    data = load(name)
    counts = [[group, entry["cases"], entry["passed"]] for group, entry in
              data["groups"].items()]
    counts.append([f"**all** ({data['subset']})", data["cases"], data["passed"]])
    rows = []
    for row in data["rows"]:
        if _cell(row["command"]).startswith("python benchmarks/bench_export_faults.py "
                                            "--request "):  # a request in a child process
            observed = f"refused: {row['first_error_line']}" if row["first_error_line"] \
                else "served"
        elif not row["command"]:
            observed = f"{row['stderr_lines']} message(s): {row['first_error_line']}"
        else:
            observed = f"exit {row['exit']}" + (f": {row['first_error_line']}"
                                                if row["first_error_line"] else "")
            if row.get("detail"):
                observed += f" ({row['detail']})"
        if row["traceback"]:
            observed += " (traceback)"
        rows.append([row["group"], row["case"],
                     f"`{_cell(row['command'])}`" if row["command"] else "",
                     _cell(row["expected"]), _cell(observed),
                     "yes" if row["passed"] else "**no**"])
    bounds = ", ".join(f"{k} {v}" for k, v in data["bounds"].items())
    return (table(["group", "cases", "as expected"], counts) + "\n\n"
            + f"Bounds of the export: {bounds}.\n\n"
            + table(["group", "case", "command", "expected", "observed", "as expected"], rows)
            + "\n\n" + source(name, data))


REQUEST_PATHS = {
    "serving_default": "`serving_default` (uint8 arrays, SavedModel)",
    "serving_bytes_png": "`serving_bytes` (PNG files, SavedModel)",
    "serving_bytes_jpeg": "`serving_bytes` (JPEG files, SavedModel)",
    "onnx": "ONNX Runtime (`ExportedModel`, uint8 arrays)",
    "edge_png": "serving/edge_infer.py (PNG files)",
    "loader": "the loaders' decoder (`preprocessing.read_file`, FILE_LIMITS)",
}


def request_cost(name="request_cost.json"):
    """bench_request_cost.py: the worst request at the bounds per path against the targets,
    then every request measured (maxima over the repeats)."""
    data = load(name)
    targets = data["targets"]
    summary = [[REQUEST_PATHS.get(path, path), fmt(entry["cpu_s"], 2), entry["cpu_case"],
                fmt(entry["memory_mib"], 0), entry["memory_case"],
                "yes" if entry["within_targets"] else "**no**"]
               for path, entry in data["at_bounds"].items()]
    rows = []
    for row in data["requests"]:
        outcome = f"refused: {row['refused']}" if row.get("refused") else "served"
        rows.append([REQUEST_PATHS.get(row["path"], row["path"]), row["case"],
                     f"{row['batch']} x {row['height']}x{row['width']}",
                     fmt(row["request_mib"], 1), fmt(row["cpu_s"], 2), fmt(row["wall_s"], 2),
                     fmt(row["memory_mib"], 0), _cell(outcome)])
    bounds = ", ".join(f"{k} {v}" for k, v in data["bounds"].items())
    limits = ", ".join(f"{k} {v}" for k, v in data["file_limits"].items())
    export = data["export"]
    return (f"Export: {export['dir'].replace('built: ', '')} ({export['parameters']} "
            f"parameters, input "
            f"{export['input'][0]}x{export['input'][1]}, {export['channels']} channel(s)). "
            f"Bounds: {bounds}; file limits: {limits}. Targets: {fmt(targets['cpu_s'], 1)} s "
            f"of CPU and {fmt(targets['memory_mib'], 0)} MiB per request; maxima of "
            f"{data['repeats']} fresh processes.\n\n"
            + table(["path", "worst CPU s", "at", "worst memory MiB", "at", "within targets"],
                    summary) + "\n\n"
            + table(["path", "request", "images", "request MiB", "CPU s", "wall s",
                     "memory MiB", "outcome"], rows)
            + "\n\n" + source(name, data))


RENDERERS = {"recipe_search": recipe_search, "faults": faults, "index": index,
             "index_sweep": index_sweep,
             "bank_clusters": bank_clusters, "nmi": nmi, "main_job": main_job, "dnc": dnc,
             "export_faults": export_faults, "request_cost": request_cost,
             "served_omniglot": served_omniglot, "export_fidelity": export_fidelity,
             "distributed": distributed,
             "inference": inference, "performance": performance,
             "recluster_table": recluster_table, "step_ratios": step_ratios}


# -- the documents --------------------------------------------------------------------------

def render_block(spec):
    name, *args = spec.split()
    if name not in RENDERERS:
        raise ValueError(f"unknown report table {name!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[name](*args).rstrip() + "\n"


def render_document(text):
    """The text with every report block re-rendered; and the specs of the blocks."""
    specs = []

    def replace(match):
        specs.append(match["spec"])
        return match.group(1) + render_block(match["spec"]) + match.group(4)

    return BLOCK.sub(replace, text), specs


def stale_blocks(paths=None):
    """[(document, spec)] of the blocks whose text differs from what renders now."""
    stale = []
    for path in paths or DOCUMENTS:
        full = os.path.join(REPO, path)
        if not os.path.exists(full):
            continue
        with open(full) as f:
            text = f.read()
        for match in BLOCK.finditer(text):
            if match["body"] != render_block(match["spec"]):
                stale.append((path, match["spec"]))
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a table differs from its results")
    parser.add_argument("documents", nargs="*", default=None,
                        help="documents to render or check, relative to the repository "
                             "(default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.documents or [] if not os.path.isfile(os.path.join(REPO, p))]
    if unknown:
        parser.error(f"no document {unknown[0]!r} in {REPO}; expected a path such as "
                     "docs/performance.md")
    if args.check:
        stale = stale_blocks(args.documents or None)
        for path, spec in stale:
            print(f"{path}: table '{spec}' differs from benchmarks/results "
                  "(python benchmarks/report.py)")
        return 1 if stale else 0
    for path in args.documents or DOCUMENTS:
        full = os.path.join(REPO, path)
        if not os.path.exists(full):
            continue
        with open(full) as f:
            text = f.read()
        rendered, specs = render_document(text)
        if rendered != text:
            common.write_atomic(full, rendered)
            print(f"{path}: {len(specs)} table(s) rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
