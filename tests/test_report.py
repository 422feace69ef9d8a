"""`mmaif report`: deltas against the full model, seed replicates and their noise, bad input."""
import json
import math

import pytest

from mmaif_pl.cli import main
from mmaif_pl.report import load_entries, seed_noise, write_report

TASKS = ("vif", "mef", "mff")


def write_metrics(folder, name, vif, mef, mff):
    per_task = {t: {"PSNR": p, "SSIM_gt": 0.8} for t, p in zip(TASKS, (vif, mef, mff))}
    overall = {"PSNR": (vif + mef + mff) / 3, "EN": 6.0, "SF": 9.0, "Qabf": 0.4, "VIF": 0.7, "MEF_SSIM": 0.8}
    (folder / f"{name}.json").write_text(json.dumps({"n_images": 3, "overall": overall, "per_task": per_task}))


@pytest.fixture
def metrics(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    write_metrics(folder, "regression", 26.0, 20.0, 21.0)        # mean 22.333
    write_metrics(folder, "regression-seed1", 27.0, 20.0, 21.0)  # mean 22.667
    write_metrics(folder, "regression-seed2", 25.0, 20.0, 21.0)  # mean 22.000
    write_metrics(folder, "no-moe", 25.5, 20.0, 21.0)            # 22.167: inside [22.0, 22.667]
    write_metrics(folder, "no-source-skip", 24.0, 20.0, 21.0)    # 21.667: below
    write_metrics(folder, "flow", 26.0, 21.0, 21.0)
    write_metrics(folder, "flow-seed1", 26.6, 21.0, 21.0)  # flow's seed mean 22.767
    write_metrics(folder, "flow-s1", 26.3, 21.0, 21.0)
    write_metrics(folder, "flow-ps2", 26.6, 21.0, 21.0)  # flow fused with the patch-shift ensemble
    write_metrics(folder, "regression-ps2", 27.5, 20.0, 21.0)  # 22.833: the regression checkpoint, 2 shifts
    write_metrics(folder, "baseline", 17.0, 17.0, 28.0)
    return folder


def test_seed_noise_deltas_and_ranges(metrics, tmp_path):
    noise = seed_noise(load_entries(metrics, None))
    assert list(noise) == ["flow", "regression"]
    stats = noise["regression"]["mean"]
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx((22 + 1 / 3 + 22 + 2 / 3 + 22) / 3)
    assert stats["std"] == pytest.approx(1 / 3)  # per-task means 22.333, 22.667, 22.0: sample std 1/3
    assert noise["regression"]["vif"]["min"] == 25.0 and noise["regression"]["vif"]["max"] == 27.0

    table = {r["name"]: r for r in write_report(metrics, tmp_path / "r.md")}
    seed_mean = 22 + 1 / 3
    assert table["no-moe"]["delta_psnr"] == pytest.approx(22 + 1 / 6 - seed_mean)  # against the seed mean
    assert table["no-moe"]["seed_range"] == "within"
    assert table["no-source-skip"]["seed_range"] == "below"
    assert table["regression-seed1"]["delta_psnr"] == pytest.approx(1 / 3)
    assert table["regression"]["seed_range"] == "" and table["regression-seed1"]["seed_range"] == ""
    # flow has no replicates: its step variants are compared with the single flow run, no seed verdict
    assert table["flow-s1"]["delta_psnr"] == pytest.approx(0.1) and table["flow-s1"]["seed_range"] == ""
    assert table["flow-ps2"]["reference"] == "flow" and table["flow-ps2"]["delta_psnr"] == pytest.approx(0.2)
    # a test-time variant of a seeded checkpoint is paired with that run, not with the seed mean
    assert table["regression-ps2"]["delta_psnr"] == pytest.approx(0.5) and table["regression-ps2"]["seed_range"] == ""
    assert math.isnan(table["baseline"]["delta_psnr"])

    md = (tmp_path / "r.md").read_text()
    assert "## Seed noise of `regression`" in md and "## Seed noise of `flow`" in md
    assert "Outside the seed range: `no-source-skip` (below)" in md
    assert md.count("Outside the seed range") == 1  # only for models with ablations
    assert "| `regression` (mean of 3 seeds) | `baseline` | +9.00 | +3.00 | -7.00 | +1.67 |" in md
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert "seed_range" in csv[0].split(",") and any(line.startswith("no-source-skip,") and ",below," in line
                                                     for line in csv)


def test_without_replicates_the_delta_is_against_the_single_run(metrics, tmp_path):
    for name in ("regression-seed1", "regression-seed2", "flow-seed1"):
        (metrics / f"{name}.json").unlink()
    table = {r["name"]: r for r in write_report(metrics, tmp_path / "r.md")}
    assert table["no-moe"]["delta_psnr"] == pytest.approx(-1 / 6) and table["no-moe"]["seed_range"] == ""
    assert "Seed noise" not in (tmp_path / "r.md").read_text()


def test_bad_input_names_the_file(metrics, tmp_path, capsys):
    (metrics / "broken.json").write_text("{not json")
    assert main(["report", "--metrics", str(metrics), "--out", str(tmp_path / "r.md")]) == 1
    assert "broken.json" in capsys.readouterr().err and not (tmp_path / "r.md").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--metrics", str(empty), "--out", str(tmp_path / "r.md")]) == 1
