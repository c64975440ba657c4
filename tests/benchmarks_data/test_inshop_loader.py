import numpy as np
import pytest

from dnc_keras.datasets import load_paths

pytestmark = pytest.mark.filterwarnings("ignore::dnc_keras.datasets.NonStandardDatasetWarning")


def test_query_and_gallery_share_labels(inshop_root):
    ds = load_paths("inshop", inshop_root)
    assert list(ds.splits) == ["train", "query", "gallery"]
    train, query, gallery = (ds.splits[k] for k in ("train", "query", "gallery"))
    assert train.class_names == ("id_00000001", "id_00000002", "id_00000003")
    assert (len(train), len(query), len(gallery)) == (7, 5, 4)
    assert query.class_names == gallery.class_names == ("id_00000004", "id_00000005",
                                                        "id_00000006")
    np.testing.assert_array_equal(query.labels, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(gallery.labels, [0, 1, 1, 2])
    assert [(e.query, e.gallery) for e in ds.eval_sets] == [("query", "gallery")]
    assert ds.recall_ks == (1, 10, 20, 30, 40, 50)


@pytest.mark.parametrize("eval_folder,img_folder", [(True, False), (True, True)])
def test_archive_subfolders(replicas, tmp_path, eval_folder, img_folder):
    root = replicas.inshop(tmp_path / "inshop", eval_folder=eval_folder, img_folder=img_folder)
    ds = load_paths("in-shop", root)
    assert len(ds.train) == 7 and all("/Img/img/" in p for p in ds.train.paths) == img_folder


def test_all_merges_query_and_gallery_per_item(inshop_root):
    ds = load_paths("inshop", inshop_root, train_classes="all")
    assert len(ds.train) == 16 and ds.train.num_classes == 6


def test_count_mismatch(inshop_root):
    path = inshop_root / "list_eval_partition.txt"
    path.write_text(path.read_text().replace("16\n", "52712\n", 1))
    with pytest.raises(ValueError, match="line 1 declares 52712 images but 16 are listed"):
        load_paths("inshop", inshop_root)


def test_unknown_status(inshop_root):
    path = inshop_root / "list_eval_partition.txt"
    path.write_text(path.read_text().replace("gallery", "galery", 1))
    with pytest.raises(ValueError, match=r"evaluation_status must be one of .*galery"):
        load_paths("inshop", inshop_root)


def test_missing_list(tmp_path):
    (tmp_path / "inshop").mkdir()
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition\.txt.*also looked in"):
        load_paths("inshop", tmp_path / "inshop")


def test_orphan_query_warns(inshop_root):
    path = inshop_root / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    kept = [l for l in lines[2:] if not ("id_00000005" in l and "gallery" in l)]
    path.write_text(f"{len(kept)}\n{lines[1]}\n" + "\n".join(kept) + "\n")
    with pytest.warns(UserWarning, match="1 query item"):
        load_paths("inshop", inshop_root)
