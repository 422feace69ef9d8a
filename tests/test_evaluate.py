"""`mmaif evaluate`: folder pairing, size checks, prepared splits, JSON/CSV output, the TNO acceptance run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mmaif_pl.cli import main
from mmaif_pl.data.io import list_images, read_image, write_image

TNO = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "vif" / "TNO"


def scene(seed: int, h: int = 64, w: int = 72, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.random((h // 8 + 1, w // 8 + 1, 1 if gray else 3))
    img = np.kron(low, np.ones((8, 8, 1)))[:h, :w]
    img = img * 0.8 + rng.random(img.shape) * 0.2
    return np.repeat(img, 3, axis=2) if gray else img


def make_folders(root: Path, names: list[str], fused_ext: str = ".png", size: tuple = (64, 72)) -> dict:
    dirs = {k: root / k for k in ("a", "b", "fused", "gt")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for i, name in enumerate(names):
        a, b = scene(2 * i, *size), scene(2 * i + 1, *size, gray=True)
        write_image(dirs["a"] / f"{name}.png", a)
        write_image(dirs["b"] / f"{name.lower()}.png", b)
        write_image(dirs["gt"] / f"{name}.png", np.maximum(a, b))
        fused = (a + b) / 2
        if fused_ext == ".png":
            write_image(dirs["fused"] / f"{name.upper()}.png", fused)
        else:  # any readable extension pairs by stem
            import cv2

            cv2.imwrite(str(dirs["fused"] / f"{name.upper()}{fused_ext}"), (fused[..., ::-1] * 255).round().astype(np.uint8))
    return dirs


def test_folder_mode_pairs_by_stem_writes_json_csv_and_prints_a_table(tmp_path, capsys):
    dirs = make_folders(tmp_path, ["Img1", "img2"], fused_ext=".bmp")
    out_json, out_csv = tmp_path / "out" / "m.json", tmp_path / "out" / "m.csv"
    rc = main(["evaluate", "--task", "vif", "--a", str(dirs["a"]), "--b", str(dirs["b"]), "--fused", str(dirs["fused"]),
               "--target", str(dirs["gt"]), "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "EN" in printed and "PSNR" in printed and f"wrote {out_json}" in printed
    result = json.loads(out_json.read_text())
    assert result["n_images"] == 2 and result["mode"] == "folders"
    assert [r["id"] for r in result["per_image"]] == ["img1", "img2"]
    assert result["profile"]["name"] == "default" and result["profile"]["mi_unit"] == "bits"
    for name in result["metrics"]:
        mean = np.mean([r[name] for r in result["per_image"]])
        assert result["overall"][name] == pytest.approx(mean)
    assert result["per_task"]["vif"]["n"] == 2
    assert 0 < result["overall"]["PSNR"] < 60
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 and float(rows[0]["EN"]) == pytest.approx(result["per_image"][0]["EN"])
    assert not [p for p in out_json.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_fused_size_mismatch_is_an_error_naming_the_file(tmp_path, capsys):
    dirs = make_folders(tmp_path, ["x"])
    write_image(dirs["fused"] / "X.png", scene(5, 64, 64))  # 64x64 against 72x64 sources
    rc = main(["evaluate", "--task", "mef", "--a", str(dirs["a"]), "--b", str(dirs["b"]), "--fused", str(dirs["fused"]),
               "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "X.png" in err and "resized" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_missing_fused_image_and_unknown_profile_are_errors(tmp_path, capsys):
    dirs = make_folders(tmp_path, ["p", "q"])
    (dirs["fused"] / "Q.png").unlink()
    args = ["evaluate", "--task", "mff", "--a", str(dirs["a"]), "--b", str(dirs["b"]), "--fused", str(dirs["fused"]),
            "--json", str(tmp_path / "m.json")]
    assert main(args) == 1 and "no fused image" in capsys.readouterr().err
    assert main(args + ["--profile", "nope"]) == 1 and "known profiles" in capsys.readouterr().err


def write_prepared(root: Path) -> Path:
    """A tiny split in the documented prepared format (docs/interfaces.md)."""
    split = root / "prepared" / "test"
    samples = []
    plan = [("vif", [], "none"), ("vif", ["gaussian_noise"], "mild"), ("mef", ["haze", "gaussian_blur"], "heavy")]
    for k, (task, names, sev) in enumerate(plan):
        sid = f"{task}-{len(names)}-{sev}-{k}"
        a_clean, b_clean = scene(10 + k), scene(20 + k)
        noise = np.random.default_rng(k).normal(0, 0.05, a_clean.shape) if names else 0
        imgs = {"a": np.clip(a_clean + noise, 0, 1), "b": b_clean, "a_clean": a_clean, "b_clean": b_clean,
                "target": (a_clean + b_clean) / 2}
        entry = {"id": sid, "task": task, "dataset": "test", "source_name": f"pair{k}", "severity": sev,
                 "n_degradations": len(names), "prompt": "",
                 "degradations": [{"name": n, "params": {}, "source": "a", "severity": sev} for n in names]}
        for key, img in imgs.items():
            write_image(split / key / f"{sid}.png", img)
            entry[key] = f"{key}/{sid}.png"
        samples.append(entry)
    (split / "index.json").write_text(json.dumps({"split": "test", "seed": 0, "created_by": "test", "samples": samples}))
    return split


def test_prepared_mode_reports_per_task_degradation_count_and_severity(tmp_path):
    split = write_prepared(tmp_path)
    fused = tmp_path / "fused"
    for s in json.loads((split / "index.json").read_text())["samples"]:
        write_image(fused / f"{s['id']}.png", read_image(split / s["target"]))  # a perfect model
    out = tmp_path / "m.json"
    assert main(["evaluate", "--prepared", str(split), "--fused", str(fused), "--json", str(out), "--profile", "cddfuse"]) == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "prepared" and r["n_images"] == 3 and r["profile"]["mi_unit"] == "nats"
    assert set(r["per_task"]) == {"vif", "mef"} and r["per_task"]["vif"]["n"] == 2
    assert set(r["per_degradation"]) == {"clean", "gaussian_noise", "haze", "gaussian_blur"}
    assert set(r["per_n_degradations"]) == {"0", "1", "2"}
    assert set(r["per_severity"]) == {"none", "mild", "heavy"}
    assert r["per_task_degradation"]["mef/haze"]["n"] == 1
    assert r["overall"]["PSNR"] is None or r["overall"]["PSNR"] > 45  # identical up to PNG rounding
    assert r["overall"]["SSIM_gt"] == pytest.approx(1.0, abs=1e-6)


def test_prepared_mode_needs_an_index_and_every_fused_image(tmp_path, capsys):
    split = write_prepared(tmp_path)
    assert main(["evaluate", "--prepared", str(tmp_path), "--fused", str(tmp_path), "--json", str(tmp_path / "m.json")]) == 1
    assert "index.json" in capsys.readouterr().err
    fused = tmp_path / "fused"
    write_image(fused / "vif-0-none-0.png", scene(0))
    assert main(["evaluate", "--prepared", str(split), "--fused", str(fused), "--json", str(tmp_path / "m.json")]) == 1
    assert "no fused image" in capsys.readouterr().err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "mmaif evaluate --task vif" in capsys.readouterr().out


@pytest.mark.skipif(not TNO.is_dir(), reason="../shared/datasets/vif/TNO not present")
def test_tno_average_fusion_gives_sane_values(tmp_path):
    """(Its speed, about 12 s for the 25 pairs on 2 idle cores, is a benchmark figure, not a test: see
    `time mmaif evaluate --task vif ...` in docs/metrics.md.)"""
    vi, ir = list_images(TNO / "vi"), list_images(TNO / "ir")
    fused = tmp_path / "average"
    for stem in vi:
        write_image(fused / f"{stem}.png", (read_image(vi[stem]) + read_image(ir[stem])) / 2)
    out = tmp_path / "tno.json"
    assert main(["evaluate", "--task", "vif", "--a", str(TNO / "vi"), "--b", str(TNO / "ir"), "--fused", str(fused),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    m = r["overall"]
    assert r["n_images"] == 25
    assert 5 < m["EN"] < 8 and 10 < m["SD"] < 60 and 0.2 < m["Qabf"] < 0.7 and 0.3 < m["VIF"] < 1.2
    assert m["Nabf"] < 1e-4  # averaging never makes an edge stronger than both (up to 8-bit rounding)
    assert 1.0 < m["SSIM"] < 2.0 and 1.0 < m["MI"] < 4.0


def test_grid_period_adds_the_block_pattern_diagnostic(tmp_path, capsys):
    """`scene` images are built from 8 x 8 blocks: BLK on the 8 px grid is well above 1 and above its value
    on a grid the blocks do not follow; `--grid-period 0` leaves it out; 1 is refused, naming the flag."""
    dirs = make_folders(tmp_path, ["p1", "p2"])
    args = ["evaluate", "--task", "vif", "--a", str(dirs["a"]), "--b", str(dirs["b"]), "--fused", str(dirs["fused"])]
    scores = {}
    for period in (8, 7, 0):
        out = tmp_path / f"g{period}.json"
        assert main(args + ["--json", str(out), "--grid-period", str(period)]) == 0
        result = json.loads(out.read_text())
        assert ("BLK" in result["metrics"]) == (period > 0) and result["grid_period"] == (period or None)
        scores[period] = result["overall"].get("BLK")
    assert scores[8] > 2 and scores[7] < 1.5 and scores[0] is None, scores
    assert main(args + ["--json", str(tmp_path / "bad.json"), "--grid-period", "1"]) == 1
    assert "--grid-period" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
