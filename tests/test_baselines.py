"""Classical restoration + fusion baselines: fusion rules, oracle restoration, the `mmaif baseline` command."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmaif_pl import baselines as B
from mmaif_pl.cli import main
from mmaif_pl.data.degrade import OPERATOR_NAMES, degrade
from mmaif_pl.data.io import read_image, write_image
from mmaif_pl.errors import UserError


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((x - y) ** 2), 1e-12)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    img = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255


def complementary_focus(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blurred = cv2.GaussianBlur(img, (0, 0), 3)
    left = np.zeros(img.shape[:2], bool)
    left[:, : img.shape[1] // 2] = True
    a = np.where(left[..., None], img, blurred)
    b = np.where(left[..., None], blurred, img)
    return a, b


def test_fusion_rules_keep_shape_and_range(photo):
    a, b = complementary_focus(photo)
    for rule in B.FUSION_RULES:
        for task in ("vif", "mef", "mff"):
            out = B.fuse(a, b, task, rule)
            assert out.shape == photo.shape and out.dtype == np.float32
            assert out.min() >= 0 and out.max() <= 1
    assert np.allclose(B.fuse(a, b, "mff", "average"), (a + b) / 2)
    with pytest.raises(UserError, match="unknown fusion rule"):
        B.fuse(a, b, "mff", "median")


def test_multi_focus_rules_beat_averaging(photo):
    a, b = complementary_focus(photo)
    average = psnr(B.fuse(a, b, "mff", "average"), photo)
    for rule in ("focus", "laplacian", "guided"):
        assert psnr(B.fuse(a, b, "mff", rule), photo) > average + 3, rule


def test_mertens_lands_between_the_exposures(photo):
    under, over = photo * 0.35, np.clip(photo * 2.2, 0, 1)
    fused = B.fuse(under, over, "mef", "auto")
    assert under.mean() < fused.mean() < over.mean()


def test_vif_fusion_keeps_the_visible_colour(photo):
    ir = np.repeat(photo.mean(axis=2, keepdims=True), 3, axis=2)
    fused = B.fuse(photo, ir, "vif", "laplacian")
    chroma = lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2YCrCb)[..., 1:]  # noqa: E731
    assert np.abs(chroma(fused) - chroma(photo)).mean() < 0.01


RESTORABLE = ("gaussian_noise", "gaussian_blur", "haze", "rain", "snow", "low_light", "over_exposure",
              "low_contrast", "high_contrast", "ir_stripes")


def test_every_degradation_has_a_restoration_and_the_oracle_ones_help(photo):
    rng = np.random.default_rng(0)
    for name in OPERATOR_NAMES:
        degraded, record = degrade(photo, name, rng, "heavy")
        restored = B.restore_one(degraded, name, record["params"])
        assert restored.shape == photo.shape and 0 <= restored.min() and restored.max() <= 1
        if name in RESTORABLE:
            assert psnr(restored, photo) > psnr(degraded, photo), name
    with pytest.raises(UserError, match="no restoration"):
        B.restore_one(photo, "lens_flare")


def test_restore_and_fuse_accepts_names_or_records(photo):
    rng = np.random.default_rng(1)
    a, rec = degrade(photo, "gaussian_noise", rng, "heavy", source="a")
    by_name = B.restore_and_fuse(a, a, "mff", ["gaussian_noise"], fusion="average")
    by_record = B.restore_and_fuse(a, photo, "mff", [rec], fusion="average")
    plain = B.restore_and_fuse(a, photo, "mff", [rec], fusion="average", restore=False)
    assert psnr(by_name, photo) > psnr(a, photo)
    assert psnr(by_record, photo) > psnr(plain, photo)


def write_degraded_split(root: Path, photo: np.ndarray) -> Path:
    """A small prepared split (documented format) degraded with the project's own operators."""
    split = root / "prepared" / "test"
    rng = np.random.default_rng(7)
    samples = []
    plan = [("mff", ["gaussian_noise"]), ("mff", ["haze"]), ("mef", ["low_contrast"]), ("vif", ["rain"]),
            ("vif", ["gaussian_blur", "gaussian_noise"])]
    for k, (task, names) in enumerate(plan):
        if task == "mff":
            a_clean, b_clean = complementary_focus(photo)
        elif task == "mef":
            a_clean, b_clean = photo * 0.5, np.clip(photo * 1.6, 0, 1)
        else:
            a_clean, b_clean = photo, np.repeat(photo.max(axis=2, keepdims=True), 3, axis=2)
        a, b, records = a_clean, b_clean, []
        for name in names:
            for src in ("a", "b"):
                img, rec = degrade(a if src == "a" else b, name, rng, "heavy", source=src)
                a, b = (img, b) if src == "a" else (a, img)
                records.append(rec)
        sid = f"{task}-{len(names)}-heavy-{'+'.join(names)}-{k}"
        entry = {"id": sid, "task": task, "dataset": "test", "source_name": "astronaut", "severity": "heavy",
                 "n_degradations": len(names), "prompt": "", "degradations": records}
        for key, img in (("a", a), ("b", b), ("a_clean", a_clean), ("b_clean", b_clean),
                         ("target", B.fuse(a_clean, b_clean, task, "average"))):
            write_image(split / key / f"{sid}.png", img)
            entry[key] = f"{key}/{sid}.png"
        samples.append(entry)
    (split / "index.json").write_text(json.dumps({"split": "test", "seed": 7, "created_by": "test", "samples": samples}))
    return split


def test_baseline_command_restoration_beats_fusing_degraded_inputs(tmp_path, photo, capsys):
    split = write_degraded_split(tmp_path, photo)
    scores = {}
    for label, extra in (("restore", []), ("plain", ["--no-restore"])):
        out = tmp_path / label
        assert main(["baseline", "--prepared", str(split), "--out", str(out), "--fusion", "average"] + extra) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        ids = [s["id"] for s in json.loads((split / "index.json").read_text())["samples"]]
        assert sorted(p.stem for p in out.glob("*.png")) == sorted(ids)
        assert read_image(out / f"{ids[0]}.png").shape == read_image(split / "a" / f"{ids[0]}.png").shape
        report = tmp_path / f"{label}.json"
        assert main(["evaluate", "--prepared", str(split), "--fused", str(out), "--json", str(report)]) == 0
        scores[label] = json.loads(report.read_text())["overall"]
    assert scores["restore"]["PSNR"] > scores["plain"]["PSNR"] + 1.0
    assert scores["restore"]["SSIM_gt"] > scores["plain"]["SSIM_gt"]


def test_baseline_command_errors(tmp_path, capsys):
    assert main(["baseline", "--prepared", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "index.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["baseline", "--help"])
    assert "mmaif baseline --prepared" in capsys.readouterr().out
