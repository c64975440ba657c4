"""A folder of the photographs users have: JPEG and PNG of mixed, non-square sizes, EXIF-rotated,
RGBA, palette, 16-bit, grey. Train on it, then embed its files through every decoder that
serves what was trained, each step a new process."""

import json

from steps import check_served_chain, dnc

import image_corpus


SMALL = ["--image-size", "40", "--learners", "2", "--embedding-dim", "16",
         "--classes-per-batch", "4", "--samples-per-class", "3", "--steps-per-epoch", "6",
         "--epochs", "2", "--no-plots", "--json"]


def test_photo_folder_train_export_serve(tmp_path):
    folder = tmp_path / "photos"
    files = image_corpus.write_photo_folder(folder)
    run_dir = tmp_path / "runs" / "photos"
    results = json.loads(dnc("train", "--dataset", "folder", "--data-dir", folder,
                             "--out", run_dir, *SMALL, cwd=tmp_path))
    assert results["test_classes"] == 4
    test_files = [f for f in files if int(f.split("scene")[1].split("/")[0]) >= 4]
    # Each decoder on these files; evaluate, the serving peers and clients, int8 and the index
    # are the glyphs journey's.
    manifest, _ = check_served_chain(tmp_path, run_dir, "photos", test_files)
    assert manifest["preprocessing"]["kernel"] == "lanczos"
