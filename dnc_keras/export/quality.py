"""Retrieval quality of an export, next to the run's own: the same protocol on the same sources.

`export` and `validate-export` embed the run's test split (or a folder given with `--data`)
through the exported model and compare MAP@R with the run's metrics.json (or, on a folder, with
the Keras model's): a gap above `AGREEMENT` means the served model is not the evaluated one.
"""

from __future__ import annotations

from dnc_keras.evaluation import evaluate

# Largest |MAP@R gap| between an export and its run before the export is refused.
AGREEMENT = 0.005
# Largest MAP@R loss of an int8 ONNX variant against float32.
INT8_MAP_LOSS = 0.01


def exported_metrics(embed_sources, source_sets, ks, nmi=False, seed=0):
    """{evaluation name: metrics} of an exported model (`ExportedModel.embed_sources`)."""
    return evaluate(embed_sources, source_sets, ks=ks, nmi=nmi, seed=seed)


def flat(metrics):
    """metrics.json's `test` ({"R@1": ...} for one evaluation, {"small": {...}, ...} for
    several) or `evaluate`'s {name: {...}} -> {name: {metric: value}}."""
    if "MAP@R" in metrics:
        return {"test": metrics}
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and "MAP@R" in v}


def compare(exported, reference, tolerance=AGREEMENT):
    """Per evaluation, MAP@R of both and the gap; `agree` when every gap is within tolerance."""
    exported, reference = flat(exported), flat(reference)
    rows = {}
    for name, values in exported.items():
        if name not in reference:
            continue
        gap = abs(values["MAP@R"] - reference[name]["MAP@R"])
        rows[name] = {"exported MAP@R": values["MAP@R"],
                      "run MAP@R": reference[name]["MAP@R"], "gap": gap}
    return {"evaluations": rows, "tolerance": tolerance,
            "agree": bool(rows) and all(r["gap"] <= tolerance for r in rows.values())}
