"""Repeated runs over seeds, reported as mean and 95% confidence interval.

One run's R@1 moves by more than the gains papers report (method.md, section 10; Musgrave et
al., "A Metric Learning Reality Check", 2020), so a comparison needs several seeds. `run_seeds`
trains the same config with seeds seed, seed + 1, ... into `<out>/seed_<s>/` and writes
`report.json` and `report.md` next to them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np

from dnc_keras import files


def interval95(values):
    """(mean, half-width of the two-sided 95% Student-t confidence interval of the mean).

    NaN and None values are left out; the half-width is NaN with fewer than 2 values.
    """
    from scipy import stats

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def _flat_metrics(results):
    """{"R@1": v, ...} for one evaluation, or {"small/R@1": v, ...} for several."""
    test = results.get("test", {})
    if "MAP@R" in test:
        return dict(test)
    return {f"{name}/{k}": v for name, metrics in test.items() for k, v in metrics.items()}


def summarise(runs):
    """{metric: {"mean", "ci95", "values"}} over the runs' test metrics."""
    per_run = [_flat_metrics(r) for r in runs]
    names = [n for n in per_run[0]] if per_run else []
    return {name: dict(zip(("mean", "ci95"), interval95([m.get(name) for m in per_run])),
                       values=[m.get(name) for m in per_run])
            for name in names}


def run_seeds(config, verbose=1, overwrite=False):
    """Trains `config.seeds` runs (seeds `config.seed` onwards); returns and writes the report.

    Each seed's run has its own folder `<out>/seed_<seed>`. A report folder that was
    interrupted resumes: finished seeds are read back from their `metrics.json`, an unfinished
    one resumes from its checkpoint. A finished report is refused unless `overwrite`.

    Returns:
        dict with `"dataset"`, `"seeds"`, `"runs"` (each run's results), `"summary"` (see
        `summarise`) and `"run_dir"`.
    """
    from dnc_keras.training import job
    from dnc_keras.training.run_folder import FINISHED, RunFolder

    out = config.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(os.path.join(out, "report.json")) and not overwrite:
        raise ValueError(f"{out} holds a finished multi-seed report; pass --overwrite to "
                         "replace it, or choose another --out")
    seeds = list(range(config.seed, config.seed + config.seeds))
    runs = []
    for seed in seeds:
        single = dataclasses.replace(config, seed=seed, seeds=1,
                                     out=os.path.join(out, f"seed_{seed}"))
        folder = RunFolder(single.out)
        if folder.state == "finished" and not overwrite:
            different = folder.differences(single.to_dict())
            if different:
                raise ValueError(f"{folder} holds a finished run with other settings "
                                 f"({', '.join(different)}): pass --overwrite to replace the "
                                 "report's runs, or choose another --out")
            with open(folder.file(FINISHED)) as f:
                runs.append({**json.load(f), "run_dir": folder.path})
            continue
        runs.append(job.run(single, verbose=verbose, overwrite=overwrite))
    report = {"dataset": runs[0]["dataset"], "seeds": seeds, "summary": summarise(runs),
              "selection": [r.get("selection", {}).get("epoch") for r in runs],
              "runs": runs, "run_dir": out}
    files.write_text(os.path.join(out, "report.md"), format_report(report) + "\n")
    files.write_json(os.path.join(out, "report.json"), report)
    return report


def format_report(report):
    """A Markdown table: one row per metric, mean +- 95% interval over the seeds."""
    lines = [f"{report['dataset']}: {len(report['seeds'])} seeds {report['seeds']}", "",
             "| metric | mean | 95% interval | runs |", "|---|---|---|---|"]
    for name, s in report["summary"].items():
        interval = "n/a" if math.isnan(s["ci95"]) else f"± {s['ci95']:.4f}"
        runs = ", ".join("nan" if v is None or not math.isfinite(v) else f"{v:.4f}"
                         for v in s["values"])
        lines.append(f"| {name} | {s['mean']:.4f} | {interval} | {runs} |")
    return "\n".join(lines)
