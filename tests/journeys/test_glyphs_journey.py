"""The main job's journey: train on glyphs, then in new processes evaluate, export, serve over
TF Serving's gRPC and REST, run on the edge, index and search what the first process wrote.
(That a bare `import dnc_keras` loads a model in a new process, Keras safe mode on, is the
other test's here and tests/test_examples.py's.)"""

import json
import sys

import numpy as np
from PIL import Image
from steps import check_served_chain, dnc, run, write_files

from dnc_keras import datasets


def test_glyphs_train_evaluate_export_serve_search(tmp_path):
    run_dir = tmp_path / "runs" / "glyphs"
    results = json.loads(dnc("train", "--epochs", "2", "--steps-per-epoch", "8",
                             "--learners", "2", "--embedding-dim", "32", "--out", run_dir,
                             "--no-plots", "--json", cwd=tmp_path))
    for name in ("config.json", "model.keras", "preprocessing.json", "metrics.json"):
        assert (run_dir / name).exists(), name

    # `evaluate` of the run's own test split in a new process is the other test's here; this
    # one evaluates a folder of the user's files (below), and the export recomputes the run's
    # MAP@R through the SavedModel (the manifest's quality, asserted last).

    # Files a user would send: the test renders as PNG, and upscaled JPEG photos of them.
    data = datasets.load("glyphs", seed=0)
    picked = {}
    for label in range(6):
        picked[f"class{label}"] = data.test_sources[data.y_test == label][:4]
    gallery = tmp_path / "gallery"
    files = write_files(gallery, picked)
    photos = {k: np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((105, 97),
                                                                         Image.BICUBIC))
                           for im in v[:2]])[..., None] for k, v in picked.items()}
    files += write_files(tmp_path / "photos", photos, "JPEG")
    manifest, reference = check_served_chain(tmp_path, run_dir, "glyphs", files, gallery,
                                             files[0])

    # Evaluated on a folder of the user's files (the README's `evaluate --data-dir`): the
    # run's preprocessing applied to them, the folder's second half of classes as queries;
    # against a numpy oracle over the run's own embeddings of the same files (`embed`, in
    # check_served_chain).
    on_folder = json.loads(dnc("evaluate", run_dir, "--dataset", "folder", "--data-dir",
                               gallery, "--json", cwd=tmp_path))
    queries = [f for f in files[:24] if f.split("/")[-2] in ("class3", "class4", "class5")]
    x = np.stack([reference[q] for q in queries])
    labels = np.array([q.split("/")[-2] for q in queries])
    distances = np.linalg.norm(x[:, None] - x[None], axis=2) + np.diag([np.inf] * len(x))
    order = np.argsort(distances, axis=1, kind="stable")[:, :3]  # R = 3 others per class
    hits = labels[order] == labels[:, None]
    map_at_r = np.mean((np.cumsum(hits, 1) / np.arange(1, 4) * hits).sum(1) / 3)
    assert on_folder["test_classes"] == 3
    assert on_folder["test"]["R@1"] == hits[:, 0].mean()
    assert abs(on_folder["test"]["MAP@R"] - map_at_r) < 1e-6
    quality = manifest["quality"]["savedmodel"]["agreement"]["evaluations"]["test"]
    assert quality["run MAP@R"] == results["test"]["MAP@R"]


def test_learned_masks_margin_loss_mixed_precision_load_in_a_new_process(tmp_path):
    """The other model kinds a user trains load in a new process as they were trained: learned
    masks (SubspaceMasks' learned weights), MarginLoss with its learned betas (one per learner
    and the conquered one, trained), a Conv-4 with plain BatchNorm (not the default, batch
    renormalisation, which the other journeys train) and a model built under mixed_float16.
    `evaluate` in a new process recomputes the run's own metrics."""
    run_dir = tmp_path / "runs" / "learned"
    results = json.loads(dnc("train", "--dataset", "digits", "--epochs", "2",
                             "--steps-per-epoch", "4", "--classes-per-batch", "4",
                             "--samples-per-class", "4", "--learners", "2",
                             "--embedding-dim", "16", "--subspaces",
                             "learned", "--no-progressive", "--loss", "margin", "--learn-beta",
                             "--mixed-precision", "--normalization", "batch",
                             "--no-nmi",
                             "--out", run_dir, "--no-plots", "--json", cwd=tmp_path))
    loaded = json.loads(run([sys.executable, "-c",
                             "import json, dnc_keras, keras; m = keras.saving.load_model("
                             f"{str(run_dir / 'model.keras')!r}); "
                             "print(json.dumps({'masks': m.subspaces.mode, "
                             "'learners': int(m.subspaces.max_learners), "
                             "'betas': m.margin_betas.numpy().tolist(), "
                             "'renorm': m.encoder.get_layer('conv4').get_layer('bn0').renorm, "
                             "'policies': sorted({l.dtype_policy.name for l in "
                             "m._flatten_layers()})}))"], tmp_path))
    assert loaded["masks"] == "learned" and loaded["learners"] == 2 and not loaded["renorm"]
    # Two learners and the conquered embedding, each trained away from beta's start, 1.2.
    assert len(loaded["betas"]) == 3 and all(abs(b - 1.2) > 1e-4 for b in loaded["betas"])
    # The run reports them (metrics.json and --json), as the model holds them.
    assert results["margin_betas"] == [round(b, 4) for b in loaded["betas"]]
    assert json.loads((run_dir / "metrics.json").read_text())["margin_betas"] == (
        results["margin_betas"])
    # The backbone computes in float16; SubspaceMasks stays float32.
    assert loaded["policies"] == ["float32", "mixed_float16"]
    evaluated = json.loads(dnc("evaluate", run_dir, "--json", cwd=tmp_path))
    assert abs(evaluated["test"]["MAP@R"] - results["test"]["MAP@R"]) < 1e-6
