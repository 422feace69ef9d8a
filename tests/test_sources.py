"""Dataset adapters: native layouts, pairing by stem, source order, split lists, errors; real samples."""
import warnings

import numpy as np
import pytest

from conftest import shared_dataset
from mmaif_pl.data.io import write_image
from mmaif_pl.data.sources import discover, load_pair
from mmaif_pl.errors import UserError


def _img(value, shape=(8, 12)):
    return np.full((*shape, 3), value, np.float32)


def test_ir_vi_layout_orders_visible_first_and_reads_gt(tmp_path):
    root = tmp_path / "MSRS"
    for name in ("00001", "00002"):
        write_image(root / "ir" / f"{name}.png", _img(0.8))
        write_image(root / "vi" / f"{name}.png", _img(0.2))
    write_image(root / "gt" / "00001.png", _img(0.5))
    write_image(root / "ir" / "lonely.png", _img(0.8))
    with pytest.warns(UserWarning, match="lonely.png"):
        recs = discover(root, task="vif")
    assert [r.name for r in recs] == ["00001", "00002"]
    a, b, gt = load_pair(recs[0])
    assert a.mean() == pytest.approx(0.2, abs=1e-2) and b.mean() == pytest.approx(0.8, abs=1e-2)
    assert gt is not None and recs[1].gt is None


def test_llvip_layout_with_split_subfolders(tmp_path):
    root = tmp_path / "LLVIP"
    for split in ("train", "test"):
        write_image(root / "infrared" / split / f"{split}1.png", _img(0.9))
        write_image(root / "visible" / split / f"{split}1.png", _img(0.1))
    recs = discover(root, split="test")
    assert [(r.name, r.task) for r in recs] == [("test1", "vif")]


def test_scene_ab_pairs_ignore_letter_case_and_order_mef_by_luminance(tmp_path):
    root = tmp_path / "MEFB"
    write_image(root / "Sky" / "sKY_a.png", _img(0.9))  # MEFB's own odd naming: bright one is "A" here
    write_image(root / "Sky" / "Sky_B.png", _img(0.1))
    write_image(root / "garage" / "Garage_A.png", _img(0.1))
    write_image(root / "garage" / "Garage_B.png", _img(0.9))
    recs = discover(root)
    assert sorted(r.name for r in recs) == ["Sky", "garage"] and {r.task for r in recs} == {"mef"}
    for rec in recs:
        a, b, _ = load_pair(rec)
        assert a.mean() < b.mean()  # under-exposed first, whatever the file names say


def test_scene_ab_mff_keeps_the_dataset_order(tmp_path):
    root = tmp_path / "mff" / "Lytro"
    write_image(root / "lytro-01_A.png", _img(0.9))
    write_image(root / "lytro-01_B.png", _img(0.1))
    (rec,) = discover(root)
    a, b, _ = load_pair(rec)
    assert rec.task == "mff" and a.mean() > b.mean()


def test_a_flat_dataset_inside_a_task_folder_keeps_every_pair_and_its_ground_truth(tmp_path):
    """A folder of several `<name>_A` / `_B` pairs is a dataset, not one scene, wherever discovery meets it (it was
    taken for a scene folder one level up, and all its pairs but one were dropped without a warning)."""
    lytro = tmp_path / "mff" / "Lytro"
    for k, name in enumerate(("lytro-01", "lytro-02", "lytro-03")):
        write_image(lytro / f"{name}-A.png", _img(0.1 * k))
        write_image(lytro / f"{name}-B.png", _img(0.5))
    write_image(lytro / "lytro-02_gt.png", _img(0.3))
    write_image(lytro / "lytro-03_F.png", _img(0.3))  # `<stem>_F`: the other ground-truth suffix read
    write_image(lytro / "lytro-03_gt.png", _img(0.3))  # a second one for the same stem: the first by name is kept
    for root in (tmp_path, tmp_path / "mff", lytro):
        recs = discover(root)
        assert [(r.name, r.group, r.task) for r in recs] == [(f"lytro-0{k}", "", "mff") for k in (1, 2, 3)], root
        assert [r.gt and r.gt.name for r in recs] == [None, "lytro-02_gt.png", "lytro-03_F.png"]
        assert [load_pair(r)[0].mean() for r in recs] == pytest.approx([0.0, 0.1, 0.2], abs=1 / 255)


def test_realmff_layout_pairs_its_suffixed_files_and_reads_fusion_as_ground_truth(tmp_path):
    """RealMFF: imageA/<n>_A, imageB/<n>_B, Fusion/<n>_F (it was found nowhere: no layout matched). A generic
    A/ + B/ whose shared names end in a side letter still pairs by the names as they are."""
    root = tmp_path / "RealMFF"
    for k, n in enumerate(("001", "002")):
        write_image(root / "imageA" / f"{n}_A.png", _img(0.1 * k))
        write_image(root / "imageB" / f"{n}_B.png", _img(0.5))
        write_image(root / "Fusion" / f"{n}_F.png", _img(0.3))
    for where in (tmp_path, root):
        recs = discover(where)
        assert [(r.name, r.task, r.a.name, r.b.name, r.gt.name) for r in recs] == [
            ("001", "mff", "001_A.png", "001_B.png", "001_F.png"), ("002", "mff", "002_A.png", "002_B.png", "002_F.png")]
    shared = tmp_path / "mine"
    for side in ("A", "B"):
        for n in ("left_b", "right_b"):
            write_image(shared / side / f"{n}.png", _img(0.5))
    assert [r.name for r in discover(shared, task="vif")] == ["left_b", "right_b"]


def test_two_folder_copies_of_mef_and_mff_sets_and_mfi_whu(tmp_path):
    """UNDER/ + OVER/ (MEF) and NEAR/ + FAR/ (MFF), in any letter case, and MFI-WHU's source_1/ + source_2/ with its
    full_clear/ ground truth: a and b as the folders say, the task from their names where the path does not tell."""
    for folder, a_name, b_name in (("MEF-SICE", "under", "over"), ("MFF-Lytro", "NEAR", "FAR"),
                                   ("MFF-WHU", "source_1", "source_2")):
        write_image(tmp_path / folder / a_name / "1.png", _img(0.2))
        write_image(tmp_path / folder / b_name / "1.png", _img(0.6))
    write_image(tmp_path / "MFF-WHU" / "full_clear" / "1.png", _img(0.4))
    recs = {r.group: r for r in discover(tmp_path)}
    assert {g: (r.task, r.a.parent.name, r.b.parent.name) for g, r in recs.items()} == {
        "MEF-SICE": ("mef", "under", "over"), "MFF-Lytro": ("mff", "NEAR", "FAR"),
        "MFF-WHU": ("mff", "source_1", "source_2")}
    assert recs["MFF-WHU"].gt.parent.name == "full_clear" and recs["MEF-SICE"].gt is None
    assert not recs["MEF-SICE"].order_by_luminance  # the folders state the order


def test_pair_ids_carry_the_layout_folder_where_a_root_holds_several(tmp_path):
    """Pairs of the same name in two datasets get distinct ids (`mmaif fuse --dataset` writes <out>/<id>.png)."""
    write_image(tmp_path / "vif" / "TNO" / "vi" / "s1.png", _img(0.5))
    write_image(tmp_path / "vif" / "TNO" / "ir" / "s1.png", _img(0.5))
    write_image(tmp_path / "mef" / "MEFB" / "s1" / "s1_A.png", _img(0.2))
    write_image(tmp_path / "mef" / "MEFB" / "s1" / "s1_B.png", _img(0.8))
    assert sorted(r.pair_id for r in discover(tmp_path)) == ["mef/MEFB/s1", "vif/TNO/s1"]
    assert [r.pair_id for r in discover(tmp_path / "vif")] == ["s1"]  # one dataset: its names alone


def test_sice_sequence_picks_darkest_and_brightest(tmp_path):
    root = tmp_path / "SICE"
    for i, v in enumerate((0.5, 0.05, 0.95, 0.3)):
        write_image(root / "1" / f"{i}.png", _img(v))
    write_image(root / "Label" / "1.png", _img(0.5))
    (rec,) = discover(root)
    a, b, gt = load_pair(rec)
    assert (a.mean(), b.mean()) == (pytest.approx(0.05, abs=1e-2), pytest.approx(0.95, abs=1e-2))
    assert rec.task == "mef" and gt is not None


def test_generic_layout_split_list_and_nested_discovery(tmp_path):
    root = tmp_path / "data" / "mff" / "train"
    for name in ("p1", "p2", "p3"):
        for sub in ("A", "B", "gt"):
            write_image(root / sub / f"{name}.png", _img(0.5))
    (root / "train.txt").write_text("p1\np3.png\n")
    assert [r.name for r in discover(root, task="mff", split="train")] == ["p1", "p3"]
    assert {r.task for r in discover(tmp_path / "data")} == {"mff"}


def test_errors_name_the_folder_or_files(tmp_path):
    with pytest.raises(UserError, match="no such dataset folder"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no known dataset layout"):
        discover(tmp_path / "empty")
    root = tmp_path / "x"
    write_image(root / "ir" / "1.png", _img(0.5, (8, 8)))
    write_image(root / "vi" / "1.png", _img(0.5, (8, 10)))
    with pytest.raises(UserError, match="cannot tell the task"):
        discover(root)
    (rec,) = discover(root, task="vif")
    with pytest.raises(UserError, match=r"size mismatch.*1\.png.*1\.png"):
        load_pair(rec)
    with pytest.raises(UserError, match="unknown task"):
        discover(root, task="medical")


@pytest.mark.parametrize("rel,count", [("vif/TNO", 25), ("vif/RoadScene", 50), ("mef/MEFB", 67), ("mff/MFIFB", 70)])
def test_real_benchmark_samples_are_found_and_every_pair_loads(rel, count):
    root = shared_dataset(rel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be left unmatched
        recs = discover(root)
    assert len(recs) == count
    assert {r.task for r in recs} == {rel.split("/")[0]}
    for rec in recs:
        a, b, _ = load_pair(rec)
        assert a.shape == b.shape and a.dtype == np.float32 and a.shape[2] == 3
        if rec.task == "mef":
            assert a.mean() <= b.mean()


def test_the_shared_samples_as_one_root_give_unique_pair_ids():
    root = shared_dataset("")
    recs = discover(root)
    assert len({r.pair_id for r in recs}) == len(recs) == 212
    assert {r.group for r in recs} == {"vif/TNO", "vif/RoadScene", "mef/MEFB", "mff/MFIFB"}
