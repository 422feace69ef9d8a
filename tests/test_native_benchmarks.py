"""A benchmark in its native layout, end to end: `mmaif fuse --dataset`, `mmaif baseline --dataset` and
`mmaif evaluate --dataset` name the pairs alike, flat for one dataset and under their folders for several."""
import json
import shutil

import numpy as np
import pytest
from conftest import shared_dataset, text_encoder
from test_fuse import fuse_command_inputs, photo_pair

from mmaif_pl.cli import main
from mmaif_pl.data.io import read_image, write_image
from mmaif_pl.data.sources import discover, load_pair
from mmaif_pl.fuse import Fuser

# (pair id, its task) of the tree `bench` builds: three datasets of three tasks, so ids carry their folders
PAIRS = {"vif/TNO/07": "vif", "vif/TNO/19": "vif", "mef/MEFB/Garage": "mef", "mff/MFIFB/savic_01": "mff",
         "mff/MFIFB/savic_02": "mff"}


def _photos(root):
    """The tree from photographs: TNO's ir/ + vi/, MEFB's scene folders with the brighter source as `_A` and a
    file prefix in another letter case than its folder, and a flat MFIFB (`<name>_A` / `_B`, no scene folders)."""
    a, b = photo_pair(96)
    for name, crop in (("07", np.s_[:80, :96]), ("19", np.s_[8:72, 16:96])):
        write_image(root / "vif/TNO/vi" / f"{name}.png", a[crop])
        write_image(root / "vif/TNO/ir" / f"{name}.png", b[crop])
    write_image(root / "mef/MEFB/Garage/garage_A.png", np.clip(a * 1.6, 0, 1))
    write_image(root / "mef/MEFB/Garage/Garage_B.png", a * 0.4)
    for name, crop in (("savic_01", np.s_[:64]), ("savic_02", np.s_[16:72, 8:])):
        write_image(root / "mff/MFIFB" / f"{name}_A.png", a[crop])
        write_image(root / "mff/MFIFB" / f"{name}_B.png", b[crop])


def _real(root):
    """The tree from the shared samples (copied into the test's folder, smallest pairs): MEFB's Garage with its
    sources' names swapped, so that the brighter one is `_A`."""
    shared = shared_dataset("")
    for name in ("07", "19"):
        for side in ("vi", "ir"):
            (root / "vif/TNO" / side).mkdir(parents=True, exist_ok=True)
            shutil.copy(shared / "vif/TNO" / side / f"{name}.png", root / "vif/TNO" / side)
    garage = root / "mef/MEFB/Garage"
    garage.mkdir(parents=True)
    shutil.copy(shared / "mef/MEFB/garage/Garage_A.jpg", garage / "garage_B.jpg")
    shutil.copy(shared / "mef/MEFB/garage/Garage_B.jpg", garage / "garage_A.jpg")
    for name in ("savic_01", "savic_02"):
        shutil.copytree(shared / "mff/MFIFB" / name, root / "mff/MFIFB" / name)


@pytest.fixture(params=["photos", "real"])
def bench(request, tmp_path):
    root = tmp_path / "bench"
    (_photos if request.param == "photos" else _real)(root)
    return root


def test_fuse_baseline_and_evaluate_a_benchmark_folder(bench, tmp_path, capsys):
    records = {r.pair_id: r for r in discover(bench)}
    assert {k: r.task for k, r in records.items()} == PAIRS
    command = fuse_command_inputs(tmp_path, text_encoder())[:3] + ["--device", "cpu"]
    assert main(command + ["--dataset", str(bench), "--out", str(tmp_path / "model")]) == 0
    assert main(["baseline", "--dataset", str(bench), "--out", str(tmp_path / "classical")]) == 0
    for pair_id, rec in records.items():
        a, b, _ = load_pair(rec)
        for out in ("model", "classical"):
            assert read_image(tmp_path / out / f"{pair_id}.png").shape == a.shape, (out, pair_id)
    # MEF pairs are fused darker first, as the model was trained, whatever their letters say
    mef = records["mef/MEFB/Garage"]
    dark, bright, _ = load_pair(mef)
    assert read_image(mef.a).mean() > read_image(mef.b).mean() and dark.mean() < bright.mean()
    fuser = Fuser(str(tmp_path / "m.ckpt"), device="cpu")
    fused = read_image(tmp_path / "model/mef/MEFB/Garage.png")
    np.testing.assert_allclose(fused, fuser(dark, bright, "Fuse the two images."), atol=1 / 255)
    assert np.abs(fused - fuser(bright, dark, "Fuse the two images.")).max() > 4 / 255

    scores = {}
    for out in ("model", "classical"):
        report = tmp_path / f"{out}.json"
        assert main(["evaluate", "--dataset", str(bench), "--fused", str(tmp_path / out), "--json", str(report)]) == 0
        result = json.loads(report.read_text())
        assert result["mode"] == "dataset" and result["n_images"] == len(PAIRS)
        assert {r["id"]: r["task"] for r in result["per_image"]} == PAIRS
        assert set(result["per_task"]) == {"vif", "mef", "mff"} and "PSNR" not in result["metrics"]
        scores[out] = result["overall"]
    assert scores["model"] != scores["classical"]

    # one dataset of the tree: its pairs flat under --out, and a split list picks some of them
    (bench / "vif/TNO/test.txt").write_text("19\n")
    assert main(command + ["--dataset", str(bench / "vif/TNO"), "--split", "test", "--out", str(tmp_path / "tno")]) == 0
    assert sorted(p.name for p in (tmp_path / "tno").iterdir()) == ["19.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "tno/19.png"), read_image(tmp_path / "model/vif/TNO/19.png"))
    capsys.readouterr()


def test_evaluate_dataset_reads_the_ground_truth_and_names_what_is_missing(tmp_path, capsys):
    root = tmp_path / "MSRS"
    a, b = photo_pair(64)
    for name in ("00001", "00002"):
        write_image(root / "vi" / f"{name}.png", a)
        write_image(root / "ir" / f"{name}.png", b)
        write_image(root / "gt" / f"{name}.png", (a + b) / 2)
    assert main(["baseline", "--dataset", str(root), "--out", str(tmp_path / "f"), "--fusion", "average"]) == 0
    report = tmp_path / "r.json"
    assert main(["evaluate", "--dataset", str(root), "--fused", str(tmp_path / "f"), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert {"PSNR", "SSIM_gt"} <= set(result["metrics"]) and result["inputs"]["dataset"] == str(root)
    assert result["overall"]["PSNR"] > 40  # the average of the sources in YCrCb is its ground truth, up to rounding

    (tmp_path / "f/00002.png").unlink()
    capsys.readouterr()
    assert main(["evaluate", "--dataset", str(root), "--fused", str(tmp_path / "f"), "--json", str(report)]) == 1
    err = capsys.readouterr().err
    assert "1 pair(s) of" in err and "00002" in err and "mmaif fuse --dataset" in err
    for args in (["--a", str(root / "vi")], ["--prepared", str(root)]):
        assert main(["evaluate", "--dataset", str(root), *args, "--fused", str(tmp_path / "f"),
                     "--json", str(tmp_path / "x.json")]) == 1
    assert main(["evaluate", "--split", "test", "--task", "vif", "--a", str(root / "vi"), "--b", str(root / "ir"),
                 "--fused", str(tmp_path / "f"), "--json", str(tmp_path / "x.json")]) == 1
    assert "--split chooses the pairs of a --dataset" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["baseline", "--dataset", str(root), "--out", str(tmp_path / "g"), "--no-restore"]) == 1
    assert "--no-restore goes with --prepared" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_fuse_dataset_refuses_other_sources_and_loose_flags(tmp_path, capsys):
    command = fuse_command_inputs(tmp_path, text_encoder()) + ["--device", "cpu"]  # it has --a and --b
    assert main(command + ["--dataset", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "give one of --a/--b, --prepared and --dataset, not --a/--b and --dataset" in capsys.readouterr().err
    assert main(command + ["--task", "vif", "--out", str(tmp_path / "o.png")]) == 1
    assert "--task and --split choose the pairs of a --dataset" in capsys.readouterr().err
    assert main(command[:3] + ["--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such dataset folder" in capsys.readouterr().err
    assert main(command[:3] + ["--dataset", str(tmp_path), "--out", str(tmp_path / "o.png")]) == 1
    assert "the fused images of several pairs go into a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()
