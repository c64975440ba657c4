"""Every published figure traces to a results file: the README's and docs' tables equal what
benchmarks/report.py renders from benchmarks/results, and prose outside the tables quotes no
measured figure."""

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
            "export_fidelity", "served_omniglot"} <= names


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
    import json
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
