"""Where each benchmark writes: distinct default results files, named in each script's --help
and docstring, `--tiny` never over a published file, and the commands recorded in the committed
results files writing, when run today, the very file that holds them."""

import json
import shlex

import pytest

from bench_harness import BENCHMARKS, REPO, load_script

RESULTS = BENCHMARKS / "results"
# script -> [(arguments, default results file)]: every way of running it that writes its own.
DEFAULTS = {
    "bench_bank_clusters": [([], "bank_clusters.json")],
    "bench_distributed": [([], "distributed.json")],
    "bench_dnc": [([], "omniglot_dnc.json"), (["--dataset", "glyphs"], "glyphs_dnc.json"),
                  (["--variants", "DnC K=4 learned"], "omniglot_dnc-k-4-learned.json"),
                  (["--loss", "margin"], "omniglot_dnc_loss-margin.json")],
    "bench_evaluation": [(["--with-before"], "evaluation.json"),
                         ([], "evaluation_without_before.json"),
                         (["--with-before", "--n", "20000"], "evaluation_n-20000.json")],
    "bench_export_faults": [([], "export_faults.json")],
    "bench_export_fidelity": [([], "export_fidelity.json")],
    "bench_faults": [([], "faults.json")],
    "bench_main_job": [([], "main_job.json")],
    "bench_index": [([], "index.json")],
    "bench_nmi": [([], "nmi.json"), (["--reference"], "nmi_reference.json")],
    "bench_inference": [(["saved_models/glyphs"], "inference.json"),
                        (["saved_models/cub/"], "inference_cub.json")],
    "bench_memory": [([], "memory.json"), (["--skip-job"], "memory_recluster.json"),
                     (["--n", "120000", "--skip-job"], "memory_recluster_n-120000.json"),
                     (["--job-args", "--epochs", "1"], "memory_job_args-epochs-1.json")],
    "bench_pipeline": [([], "pipeline.json"), (["--n", "20000"], "pipeline_n-20000.json")],
    "bench_request_cost": [([], "request_cost.json")],
    "bench_recluster": [([], "recluster.json"),
                        (["--ks", "2", "4", "8", "16", "32"], "recluster_ks-2-4-8-16-32.json")],
    "bench_served_quality": [(["--data-dir", "omniglot"], "served_omniglot.json")],
    "bench_train_step": [([], "train_step.json"), (["--skip-step"], "train_step_epoch.json"),
                         (["--skip-epoch"], "train_step_step.json"),
                         (["--learners", "8"], "train_step_learners-8.json"),
                         (["--skip-step", "--epoch-candidates", "dnc_epoch", "keras_epoch+xla"],
                          "train_step_epoch_epoch_candidates-dnc_epoch-keras_epoch+xla.json")],
}


def test_every_benchmark_is_listed():
    assert {p.stem for p in BENCHMARKS.glob("bench_*.py")} == set(DEFAULTS)


def test_default_results_files_are_distinct():
    names = [name for cases in DEFAULTS.values() for _, name in cases]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("script", sorted(DEFAULTS))
def test_default_out_is_named_and_tiny_is_apart(script, capsys):
    bench = load_script(script)
    for argv, name in DEFAULTS[script]:
        assert bench.parse_args(argv).out == str(RESULTS / name)
        # --job-args takes every argument after it.
        tail = [] if "--job-args" in argv else ["--out", "x/y.json"]
        assert bench.parse_args(["--tiny", *argv]).out == str(
            RESULTS / "tiny" / name)
        if tail:
            assert bench.parse_args([*argv, *tail]).out == "x/y.json"
    first = DEFAULTS[script][0][1]
    assert f"benchmarks/results/{first}" in bench.__doc__
    with pytest.raises(SystemExit):
        bench.parse_args([*DEFAULTS[script][0][0], "--help"])
    assert f"benchmarks/results/{first}" in " ".join(capsys.readouterr().out.split())


def _recorded_commands():
    for path in sorted(RESULTS.glob("*.json")):
        command = json.loads(path.read_text()).get("command")
        if command:
            yield path.name, command


@pytest.mark.parametrize("name, command", list(_recorded_commands()))
def test_recorded_command_writes_its_own_file(name, command):
    """Before the provenance, the commands were joined with spaces, unquoted: where a variant
    name holds spaces the words cannot be parsed back, so only their --out is read."""
    words = command.split()
    assert words[0] == "python" and words[1].startswith("benchmarks/bench_")
    bench = load_script(words[1].split("/")[1][:-3])
    if "--out" in words:
        # Relative paths were given from the repository's root, as the docs quote them.
        out = load_script("common").resolve_out(words[words.index("--out") + 1], None)
        assert REPO / out == RESULTS / name
    else:
        assert bench.parse_args(shlex.split(command)[2:]).out == str(RESULTS / name)
