"""Every published figure traces to a results file: the README's and docs' tables equal what
benchmarks/report.py renders from benchmarks/results, and prose outside the tables quotes no
measured figure."""

import glob
import json
import os
import re
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import report  # noqa: E402

# A measured figure: three or more decimals, a decimal speed ratio, a timing, a memory size,
# a decimal percentage, a difference in scientific notation, "a factor of N".
FIGURE = re.compile(r"\b\d+\.\d{3,}\b|\b\d+\.\d+x\b|\b\d[\d,.]*\s?(?:ms|MiB|GiB|MB|GB)\b"
                    r"|\b\d+\.\d+%|\b\d+\.\d+e-\d+\b|\bfactor of (?:two|three|\d)")
# Constants quoted from others' code or documents, not measurements of ours.
QUOTED = {"1.001e-5",  # keras.applications' BatchNorm epsilon (docs/reproducing.md)
          "103.939", "116.779",  # the caffe ImageNet mean in BGR
          "0.485", "0.229",  # torchvision's ImageNet normalisation
          "74.9%", "76.1%",  # ImageNet top-1 as keras.applications and torchvision list it
          "arXiv"}  # a paper's arXiv number


def _settings():
    """The package's own thresholds and settings, which the docs may state: they are chosen,
    not measured (each is a named constant in the module that owns it)."""
    from dnc_keras.export import parity, quality, signatures

    return {f"{quality.AGREEMENT}", f"{quality.INT8_MAP_LOSS}", f"{parity.PARITY_TOLERANCE}",
            f"{signatures.BATCH_TIMEOUT_MICROS // 1000} ms"}


def _prose(text):
    """The text outside code fences and report blocks, line by line."""
    text = report.BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return text.splitlines()


def test_every_table_equals_its_rendering():
    stale = report.stale_blocks()
    assert not stale, f"re-render with `python benchmarks/report.py`: {stale}"


def test_every_document_has_its_tables():
    specs = []
    for path in report.DOCUMENTS:
        with open(os.path.join(REPO, path)) as f:
            specs += [m["spec"] for m in report.BLOCK.finditer(f.read())]
    names = {spec.split()[0] for spec in specs}
    assert {"main_job", "dnc", "distributed", "performance", "inference",
            "export_fidelity", "served_omniglot", "export_faults", "request_cost", "faults",
            "index"} <= names


@pytest.mark.parametrize("path", report.DOCUMENTS)
def test_prose_quotes_no_measured_figure(path):
    with open(os.path.join(REPO, path)) as f:
        lines = _prose(f.read())
    settings = _settings()
    found = [(number, line.strip()) for line in lines for number in FIGURE.findall(line)
             if number not in settings and not any(quoted in line for quoted in QUOTED)]
    assert not found, f"{path}: figures outside a rendered table: {found[:5]}"


def test_a_changed_result_makes_its_table_stale(tmp_path, monkeypatch):
    """The check can fail: render, then change a number in a results file copy."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(report.RESULTS, results)
    monkeypatch.setattr(report, "RESULTS", str(results))
    text = "<!-- report: distributed -->\n" + report.render_block("distributed") + \
        "<!-- /report -->\n"
    document = tmp_path / "doc.md"
    document.write_text(text)
    monkeypatch.setattr(report, "REPO", str(tmp_path))
    assert report.stale_blocks(["doc.md"]) == []
    data = json.loads((results / "distributed.json").read_text())
    data["ratios"]["fit_2 / fit_1 (time)"]["median"] += 0.5
    (results / "distributed.json").write_text(json.dumps(data))
    assert report.stale_blocks(["doc.md"]) == [("doc.md", "distributed")]


def test_commands_name_no_path_outside_the_repository():
    inside = os.path.join(report.REPO, "benchmarks", "results", "x.json")
    command = (f"python benchmarks/bench_served_quality.py --data-dir /data/omniglot_small1/ "
               f"--out {inside} --package-dir /tmp/old")
    assert report._local_paths(command) == (
        f"python benchmarks/bench_served_quality.py --data-dir omniglot_small1 --out {inside} "
        "--package-dir old")


def _results(tmp_path, monkeypatch, name, data):
    """`data` as benchmarks/results/NAME in a temporary results folder, with a provenance."""
    data = {"provenance": {"command": f"python benchmarks/{name}", "date": "2026-01-02 03:04:05",
                           "git": {"commit": "a" * 40, "dirty": False}}, **data}
    (tmp_path / name).write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", str(tmp_path))


def _lines(text, start):
    return [line for line in text.splitlines() if line.startswith(start)]


def test_export_faults_lists_every_case_and_its_counts(tmp_path, monkeypatch):
    rows = [
        {"group": "image files", "case": "bomb via edge_infer.py",
         "command": "python serving/edge_infer.py /work/x/digits.onnx files/bomb.png",
         "expected": "exit 2, one line naming the file", "exit": 2,
         "first_error_line": "edge_infer: error: /tmp/export_faults-ab_12/files/bomb.png: "
                             "refused | before decoding", "stderr_lines": 1, "traceback": False,
         "passed": True},
        {"group": "oversized requests", "case": "empty batch (edge_infer)",
         "command": "python /some/clone/benchmarks/bench_export_faults.py --request edge_infer "
                    "exports/digits  # uint8 [0, 8, 8, 1]", "expected": "refused: ...",
         "exit": 0, "first_error_line": "", "stderr_lines": 0, "traceback": True,
         "passed": False},
    ]
    _results(tmp_path, monkeypatch, "export_faults.json", {
        "subset": "all", "bounds": {"max_side": 7, "max_batch": 8, "max_pixels": 9},
        "cases": 2, "passed": 1, "rows": rows,
        "groups": {"image files": {"cases": 1, "passed": 1},
                   "oversized requests": {"cases": 1, "passed": 0}}})
    text = report.render_block("export_faults")
    assert _lines(text, "| image files | 1 | 1 |") and \
        _lines(text, "| oversized requests | 1 | 0 |") and _lines(text, "| **all** (all) | 2 | 1 |")
    assert "max_side 7, max_batch 8, max_pixels 9" in text
    bomb, empty = _lines(text, "| image files | bomb"), _lines(text, "| oversized requests | empty")
    # The work folder and the clone's path dropped, the pipe escaped.
    assert bomb == ["| image files | bomb via edge_infer.py | `python serving/edge_infer.py "
                    "/work/x/digits.onnx files/bomb.png` | exit 2, one line naming the file | "
                    "exit 2: edge_infer: error: files/bomb.png: refused \\| before decoding | "
                    "yes |"]
    assert empty == ["| oversized requests | empty batch (edge_infer) | `python benchmarks/"
                     "bench_export_faults.py --request edge_infer exports/digits  # uint8 "
                     "[0, 8, 8, 1]` | refused: ... | served (traceback) | **no** |"]
    assert text.rstrip().endswith("(commit aaaaaaa, 2026-01-02 03:04:05).")


def test_request_cost_names_the_paths_beyond_their_targets(tmp_path, monkeypatch):
    request = {"path": "edge_png", "case": "bound: one image of max pixels", "batch": 1,
               "height": 4096, "width": 2, "request_mib": 0.0, "cpu_s": 3.25, "wall_s": 1.5,
               "memory_mib": 612.4, "refused": None}
    refused = {**request, "path": "serving_bytes_png", "case": "beyond: too wide", "width": 4097,
               "cpu_s": 0.01, "memory_mib": 4.0, "refused": "refused before decoding"}
    _results(tmp_path, monkeypatch, "request_cost.json", {
        "export": {"dir": "built: a model", "parameters": 12, "input": [64, 64], "channels": 3},
        "bounds": {"max_side": 4096}, "file_limits": {"max_side": 16384},
        "targets": {"cpu_s": 2.0, "memory_mib": 476.8}, "repeats": 2,
        "requests": [request, refused],
        "at_bounds": {"edge_png": {"cpu_s": 3.25, "cpu_case": request["case"],
                                   "memory_mib": 612.4, "memory_case": request["case"],
                                   "within_targets": False}}})
    text = report.render_block("request_cost")
    assert text.startswith("Export: a model (12 parameters, input 64x64, 3 channel(s)). Bounds: "
                           "max_side 4096; file limits: max_side 16384. Targets: 2.0 s of CPU "
                           "and 477 MiB per request; maxima of 2 fresh processes.")
    edge = report.REQUEST_PATHS["edge_png"]
    assert _lines(text, f"| {edge} | 3.25 |") == [
        f"| {edge} | 3.25 | bound: one image of max pixels | 612 | bound: one image of max "
        "pixels | **no** |"]
    assert _lines(text, f"| {edge} | bound") == [
        f"| {edge} | bound: one image of max pixels | 1 x 4096x2 | 0.0 | 3.25 | 1.50 | 612 | "
        "served |"]
    png = report.REQUEST_PATHS["serving_bytes_png"]
    assert _lines(text, f"| {png} | beyond") == [
        f"| {png} | beyond: too wide | 1 x 4096x4097 | 0.0 | 0.01 | 1.50 | 4 | refused: "
        "refused before decoding |"]


def test_bank_clusters_summarises_each_run(tmp_path, monkeypatch):
    comparisons = [{"ari": 0.2, "seed_ari": 0.9, "unseen_fraction": 0.01},
                   {"ari": 0.6, "seed_ari": 1.0, "unseen_fraction": 0.03},
                   {"full_pass_error": "too few classes", "unseen_fraction": 0.0}]
    _results(tmp_path, monkeypatch, "bank_clusters.json", {"runs": [
        {"seed": 4, "comparisons": comparisons, "test": {"R@1": 0.5, "MAP@R": 0.25}}]})
    # ARI median of 0.2 and 0.6; the median and max of the fractions 0.01, 0.03, 0.
    assert _lines(report.render_block("bank_clusters"), "| 4 |") == [
        "| 4 | 3 | 0.400 | 0.200 | 0.950 | 1.0% | 3.0% | 0.500 | 0.250 |"]


def test_nmi_gives_each_route_and_seed_against_the_reference(tmp_path, monkeypatch):
    _results(tmp_path, monkeypatch, "nmi.json", {
        "settings": {"n": 600, "classes": 100, "dim": 8},
        "target": {"seconds": 60.0, "nmi_difference": 0.005},
        "routes": {"package": {"seeds": {"0": {
            "nmi": 0.9, "sklearn_nmi": 0.95, "difference": -0.05, "seconds": 12.4,
            "other_load": 0.5, "met": False}}}, "fast": {"seeds": {"1": {
                "nmi": 0.9, "sklearn_nmi": None, "difference": None, "seconds": 1.0,
                "other_load": 0.0, "met": False}}}}})
    text = report.render_block("nmi")
    assert "600 embeddings of d = 8 in 100 classes" in text and "within 0.005" in text
    assert _lines(text, "| package |") == [
        "| package | 0 | 0.900 | 0.950 | -0.050 | 12 | 0.50 | no |"]
    assert _lines(text, "| fast |") == ["| fast | 1 | 0.900 | n/a | n/a | 1 | 0.00 | no |"]



def test_recipe_search_lists_each_familys_trials_best_first(tmp_path, monkeypatch):
    def trial(number, value, **settings):
        return {"trial": number, "settings": {**settings, "eval_every": 2},
                "validation": {"MAP@R": value, "R@1": 0.5, "epoch": 8}}

    _results(tmp_path, monkeypatch, "recipe_search_x.json", {
        "dataset": "x", "runs": 4, "budget_per_family": 2,
        "families": {"dnc": {"trials": [trial(1, 0.4, learners=4), trial(0, 0.3, learners=2)]},
                     "single": {"trials": [trial(0, 0.35, learners=1)]}}})
    text = report.render_block("recipe_search recipe_search_x.json")
    assert "x: 4 runs (2 random trials per family)" in text
    assert _lines(text, "| dnc |") == ["| dnc | 1 | 0.400 | 0.500 | 8 | learners 4 |",
                                       "| dnc | 0 | 0.300 | 0.500 | 8 | learners 2 |"]
    assert _lines(text, "| single |") == ["| single | 0 | 0.350 | 0.500 | 8 | learners 1 |"]


def test_recipe_search_renders_its_second_stage(tmp_path, monkeypatch):
    stage = {"values": [{"value": False, "MAP@R": {"0": 0.5, "1": 0.7}, "mean": 0.6},
                        {"value": True, "MAP@R": {"0": 0.6, "1": 0.9}, "mean": 0.75}],
             "differences": {"True": {"mean": 0.15, "ci95": [0.02, 0.28], "seeds": [0, 1]}},
             "kept": True}
    trial = {"trial": 0, "settings": {"learners": 4}, "validation": {"MAP@R": 0.5, "R@1": 0.5,
                                                                      "epoch": 8}}
    _results(tmp_path, monkeypatch, "recipe_search_y.json", {
        "dataset": "y", "runs": 8, "budget_per_family": 1, "refine": {"seeds": [0, 1]},
        "families": {"dnc": {"trials": [trial], "refine": {"freeze": stage}}}})
    text = report.render_block("recipe_search recipe_search_y.json")
    assert "y: 8 runs (1 random trials per family, then 7 second-stage runs each)" in text
    assert "seeds 0, 1; the value with the higher mean is kept" in text
    assert _lines(text, "| dnc | freeze |") == [
        "| dnc | freeze | False | 2 | 0.600 |  | no |",
        "| dnc | freeze | True | 2 | 0.750 | +0.150 (+0.020 to +0.280, 2 seeds): ahead | yes |"]

def test_every_committed_results_file_records_its_provenance():
    """Each results file was written by a benchmark (not edited by hand): it carries the
    command, the git commit and the date that `common.write_results` records."""
    missing = []
    for path in sorted(glob.glob(os.path.join(report.RESULTS, "*.json"))):
        with open(path) as f:
            provenance = json.load(f).get("provenance") or {}
        commit = (provenance.get("git") or {}).get("commit")
        if not (provenance.get("command") and commit and provenance.get("date")):
            missing.append(os.path.basename(path))
    assert not missing, f"results files without provenance: {missing}"


def test_index_shows_each_copy_on_small_pages_and_what_huge_pages_brought(tmp_path,
                                                                          monkeypatch):
    def timed(median):
        return {"median_s": median, "min_s": median, "max_s": median}

    def ratio(median, low, high):
        return {"median": median, "min": low, "max": high, "ci95": [low, high]}

    hnsw = {"parameters": {"efSearch": 44}, "recall_at_10": 0.955, "qps": 2500.0,
            "build_s": 10.0, "index_bytes": 2 ** 20, "speedup_over_flat": ratio(12.0, 11, 13),
            "small_pages": {"search_s": timed(5.0), "speedup_over_flat": ratio(10.0, 9.5, 10.5),
                            "huge_over_small_pages": ratio(1.2, 1.1, 1.3)}}
    flat = {"parameters": {}, "recall_at_10": 1.0, "qps": 200.0, "build_s": 0.1,
            "index_bytes": 2 ** 20, "speedup_over_flat": ratio(1.0, 1.0, 1.0)}
    _results(tmp_path, monkeypatch, "index.json", {
        "settings": {"n": 1000, "queries": 10_000, "dim": 8, "classes": 10, "spread": 0.1,
                     "threads": 1, "repeats": 3},
        "target": {"recall_at_10": 0.95, "speedup_over_flat": 10.0},
        "indexes": {"flat": flat, "hnsw": hnsw}})
    rows = _lines(report.index(), "| hnsw")
    assert rows[0].startswith("| hnsw | 0.955 | 2,500 | 12.0 (11.0-13.0) |")
    # 10,000 queries in 5 s; the gain is the index's time per round over its copy's.
    assert rows[1] == ("| hnsw, 4 KiB pages | 0.955 | 2,000 | 10.0 (9.5-10.5) |  |  | "
                       "huge pages: 1.20x (1.10-1.30) | - |")


def test_dnc_renders_a_table_per_baseline(tmp_path, monkeypatch):
    def stats(value):
        return {m: {"mean": value, "std": 0.01} for m in ("R@1", "MAP@R")}

    def diff(mean, low, high):
        return {"mean": mean, "ci95": [low, high], "seeds": [0, 1, 2]}

    _results(tmp_path, monkeypatch, "x_dnc.json", {
        "summary": {"A": stats(0.5), "B": stats(0.6), "C": stats(0.4)},
        "runs": {"A": [{}] * 3, "B": [{}] * 3, "C": [{}] * 3},
        "baseline": "A", "differences": {"B": {"MAP@R": diff(0.1, 0.05, 0.15)},
                                         "C": {"MAP@R": diff(-0.1, -0.2, 0.01)}},
        "also_against": {"C": {"A": {"MAP@R": diff(0.1, -0.01, 0.2)},
                               "B": {"MAP@R": diff(0.2, 0.1, 0.3)}}}})
    text = report.dnc("x_dnc.json")
    assert _lines(text, "| B - A |") == ["| B - A | +0.100 (+0.050 to +0.150, 3 seeds): ahead |"]
    assert _lines(text, "| C - A |") == ["| C - A | -0.100 (-0.200 to +0.010, 3 seeds): not "
                                         "ahead |"]
    assert "Against C:" in text
    assert _lines(text, "| B - C |") == ["| B - C | +0.200 (+0.100 to +0.300, 3 seeds): ahead |"]
    # C - A is in the first table: its reverse, A - C, is not repeated.
    assert _lines(text, "| A - C |") == []


def test_step_ratios_lists_each_pair_with_its_interval(tmp_path, monkeypatch):
    # Two rounds: dnc took 1.0 s and 2.0 s, dnc+renorm 1.1 s and 2.4 s; a/b = time(b) / time(a).
    ratios = [1.0 / 1.1, 2.0 / 2.4]
    entry = {"median": sum(ratios) / 2, "min": min(ratios), "max": max(ratios),
             "all": ratios, "geometric_mean": (ratios[0] * ratios[1]) ** 0.5,
             "ci95": [0.5, 1.5]}
    _results(tmp_path, monkeypatch, "step.json", {"step": {
        "speed_ratios": {"dnc+renorm/dnc": entry},
        "candidates": {"dnc": {"ms_per_step": 40.0}, "dnc+renorm": {"ms_per_step": 44.0}}}})
    text = report.render_block("step_ratios step.json")
    assert _lines(text, "| dnc+renorm/dnc |") == [
        "| dnc+renorm/dnc | 0.871 (0.833-0.909) | 0.870 | 0.500-1.500 | 2 |"]
    assert "Median step: dnc 40.0 ms, dnc+renorm 44.0 ms." in text


def test_dnc_verdict_reads_the_looks_adjusted_interval(tmp_path, monkeypatch):
    stats = {m: {"mean": 0.5, "std": 0.01} for m in ("R@1", "MAP@R")}
    # Clears 0 at 95% but not at 97.5%: not ahead once the extension after a look is counted.
    diff = {"mean": 0.03, "ci95": [0.01, 0.05], "interval": [-0.002, 0.062], "looks": 2,
            "confidence": 0.975, "seeds": list(range(10))}
    _results(tmp_path, monkeypatch, "x_dnc.json", {
        "summary": {"A": stats, "B": stats}, "runs": {"A": [{}] * 10, "B": [{}] * 10},
        "baseline": "A", "looks": 2, "differences": {"B": {"MAP@R": diff}}})
    text = report.dnc("x_dnc.json")
    assert _lines(text, "| B - A |") == [
        "| B - A | +0.030 (+0.010 to +0.050; 97.5%: -0.002 to +0.062, 10 seeds): not ahead |"]
    assert "2 looks in all" in text
