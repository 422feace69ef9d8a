"""Fusion metrics: golden values derivable by hand, agreement with library implementations, profiles."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmaif_pl.metrics import functional as FM
from mmaif_pl.metrics.fusion import LOWER_IS_BETTER, fusion_metrics, metric_names, score_images
from mmaif_pl.metrics.profiles import PROFILES, get_profile
from mmaif_pl.errors import UserError

# Qg -> 0.9994 as G grows (with F = A the reference code's quirk sets G = g_F, a gradient magnitude >> 1),
# Qa = 0.9879 / (1 + exp(-22 * 0.2)) at A = 1
QABF_MAX = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))


def planes(*arrays) -> list[torch.Tensor]:
    return [torch.as_tensor(np.asarray(x, dtype=np.float64))[None] for x in arrays]


def textured(seed: int, h: int = 96, w: int = 112) -> np.ndarray:
    """A smooth random scene on 0..255 integers (photograph-like statistics, strong edges)."""
    rng = np.random.default_rng(seed)
    low = rng.random((h // 8 + 1, w // 8 + 1))
    img = np.kron(low, np.ones((8, 8)))[:h, :w]
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img, 1.5) * 200 + rng.random((h, w)) * 40
    return np.round(img).clip(0, 255)


def as_rgb_tensor(gray255: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(gray255 / 255.0, dtype=torch.float32)
    return t.expand(1, 3, *t.shape).clone()


# ---------------------------------------------------------------- single-image statistics


def test_entropy_constant_is_zero_and_full_ramp_is_eight_bits():
    const, ramp = planes(np.full((16, 16), 77.0), np.tile(np.arange(256.0), (4, 1)))
    assert FM.entropy(const).item() == 0.0
    assert FM.entropy(ramp).item() == pytest.approx(8.0, abs=1e-12)
    # two equally frequent levels: exactly one bit
    (half,) = planes(np.repeat([[0.0, 255.0]], 8, axis=0))
    assert FM.entropy(half).item() == pytest.approx(1.0, abs=1e-12)


def test_sd_sf_ag_of_constructed_images():
    h, w = 10, 12
    stripes = np.tile([0.0, 255.0], (h, w // 2))  # columns alternate 0, 255
    (x,) = planes(stripes)
    assert FM.standard_deviation(x).item() == pytest.approx(127.5)
    # every horizontal difference is 255, no vertical difference
    assert FM.spatial_frequency(x, "differences").item() == pytest.approx(255.0)
    assert FM.spatial_frequency(x, "pixels").item() == pytest.approx(255.0 * math.sqrt((w - 1) / w))
    c = 3.0
    (ramp,) = planes(np.tile(np.arange(w) * c, (h, 1)))  # gradient() = c everywhere, 0 vertically
    assert FM.average_gradient(ramp, "pixels").item() == pytest.approx(c / math.sqrt(2))
    assert FM.average_gradient(ramp, "interior").item() == pytest.approx(c / math.sqrt(2) * h * w / ((h - 1) * (w - 1)))
    # matches numpy's gradient (same border rule as MATLAB's)
    img = textured(1)
    gy, gx = np.gradient(img)
    expect = np.sqrt((gx**2 + gy**2) / 2).sum() / ((img.shape[0] - 1) * (img.shape[1] - 1))
    assert FM.average_gradient(*planes(img)).item() == pytest.approx(expect, rel=1e-12)


# ---------------------------------------------------------------- information and correlation


def test_grid_artifact_ratio_of_constructed_images():
    ramp = torch.arange(64, dtype=torch.float64).expand(1, 64, 64).clone()  # steps of 1 everywhere (rows only)
    assert FM.grid_artifact_ratio(ramp).item() == pytest.approx(1.0)
    assert FM.grid_artifact_ratio(ramp.transpose(1, 2)).item() == pytest.approx(1.0)
    # 8 x 8 blocks: every change on the grid lines, 7 of the 63 gaps per direction -> 63 / 7
    blocks = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(ramp[None], 8), scale_factor=8)[0]
    assert FM.grid_artifact_ratio(blocks, 8).item() == pytest.approx(9.0)
    assert FM.grid_artifact_ratio(blocks, 16).item() == pytest.approx(9.0)  # a coarser grid: 3 of 3 lines
    assert FM.grid_artifact_ratio(blocks, 7).item() < 2  # a grid the blocks do not follow
    noise = torch.from_numpy(np.random.default_rng(0).random((2, 64, 64)) * 255)
    assert FM.grid_artifact_ratio(noise).tolist() == pytest.approx([1.0, 1.0], abs=0.1)
    assert math.isnan(FM.grid_artifact_ratio(torch.zeros(1, 64, 64, dtype=torch.float64)).item())
    assert FM.grid_artifact_ratio(noise[:, :6, :6]).isnan().all()  # no grid line inside
    with pytest.raises(ValueError, match="period"):
        FM.grid_artifact_ratio(noise, 1)


def test_mutual_information_of_an_image_with_itself_is_its_entropy():
    (x,) = planes(textured(2))
    assert FM.mutual_information(x, x).item() == pytest.approx(FM.entropy(x).item(), rel=1e-10)
    assert FM.fusion_mutual_information(x, x, x).item() == pytest.approx(2 * FM.entropy(x).item(), rel=1e-10)


def test_mutual_information_matches_sklearn_in_nats():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a, b = textured(3), textured(4)
    f = np.round((a + b) / 2)
    expect = sklearn_metrics.mutual_info_score(f.ravel(), a.ravel()) + sklearn_metrics.mutual_info_score(f.ravel(), b.ravel())
    got = FM.fusion_mutual_information(*planes(f, a, b), base=math.e).item()
    assert got == pytest.approx(expect, rel=1e-10)
    bits = FM.fusion_mutual_information(*planes(f, a, b), base=2).item()
    assert got == pytest.approx(bits * math.log(2), rel=1e-12)


def test_scd_and_cc_signs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    f_avg, a_t, b_t = planes((a + b) / 2, a, b)
    assert FM.sum_of_correlations_of_differences(f_avg, a_t, b_t).item() > 1.0  # r(A-B, A) + r(B-A, B) = 2/sqrt(2)
    (f_bad,) = planes(b - a)  # F - B = -A: anti-correlated with A
    assert FM.sum_of_correlations_of_differences(f_bad, a_t, b_t).item() < 0
    assert FM.correlation_coefficient(a_t, a_t, a_t).item() == pytest.approx(1.0)
    (neg,) = planes(-a)
    assert FM.correlation_coefficient(neg, a_t, a_t).item() == pytest.approx(-1.0)


# ---------------------------------------------------------------- edges


def test_qabf_of_identical_images_is_near_its_maximum_and_blur_scores_lower():
    img = textured(5)
    x, = planes(img)
    q = FM.qabf(x, x, x).item()
    assert QABF_MAX - 5e-3 < q <= QABF_MAX + 1e-12
    from scipy.ndimage import gaussian_filter

    (blurred,) = planes(gaussian_filter(img, 2.0))
    assert FM.qabf(blurred, x, x).item() < q - 0.1


def test_nabf_zero_for_average_fusion_and_positive_for_noise():
    a, b = planes(textured(6), textured(7))
    # |grad (A+B)/2| <= max(|grad A|, |grad B|): the average never makes an edge stronger than both
    assert FM.nabf((a + b) / 2, a, b).item() == 0.0
    noisy = (a + b) / 2 + torch.from_numpy(np.random.default_rng(1).normal(0, 20, a.shape))
    assert FM.nabf(noisy, a, b).item() > 0.01
    assert "Nabf" in LOWER_IS_BETTER


# ---------------------------------------------------------------- VIF, SSIM family, Qcb


def test_vif_of_a_source_with_itself_is_one_and_matches_torchmetrics():
    from torchmetrics.functional.image import visual_information_fidelity

    a, b = planes(textured(8), textured(9))
    assert FM.vifp(a, a).item() == pytest.approx(1.0, abs=1e-9)
    assert FM.fusion_vif(a, a, a).item() == pytest.approx(2.0, abs=1e-9)
    f = (a + b) / 2
    expect = visual_information_fidelity(f[None], a[None], reduction="none").item()
    assert FM.vifp(a, f).item() == pytest.approx(expect, rel=1e-9)
    small = torch.zeros(1, 40, 60, dtype=torch.float64)
    assert math.isnan(FM.vifp(small, small).item())


def test_ssim_matches_skimage_in_both_conventions():
    from skimage.metrics import structural_similarity

    a, f = textured(10), np.round((textured(10) + textured(11)) / 2)
    fa, aa = planes(f, a)
    wang = structural_similarity(f, a, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert FM.ssim(fa, aa).item() == pytest.approx(wang, rel=1e-10)
    skimage_float = structural_similarity(f, a, data_range=2.0)  # what CDDFuse's float call amounted to
    got = FM.ssim(fa, aa, data_range=2.0, window="uniform", win_size=7, sample_covariance=True).item()
    assert got == pytest.approx(skimage_float, rel=1e-10)
    assert FM.fusion_ssim(aa, aa, aa, "sum").item() == pytest.approx(2.0)
    assert FM.fusion_ssim(aa, aa, aa, "mean").item() == pytest.approx(1.0)


def _mef_ssim_loop(f: np.ndarray, seq: list[np.ndarray], k: float = 0.03) -> float:
    """Single-scale MEF-SSIM written patch by patch from Ma et al. 2015 (reference for the vectorised code)."""
    ws, bd = 11, 5
    g = np.exp(-((np.arange(ws) - bd) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c = (k * 255) ** 2
    q = []
    for i in range(bd, f.shape[0] - bd):
        for j in range(bd, f.shape[1] - bd):
            patches = [s[i - bd:i + bd + 1, j - bd:j + bd + 1] for s in seq]
            centred = [p - p.mean() for p in patches]
            norms = [np.linalg.norm(x) for x in centred]
            ed = [n + 0.001 for n in norms]
            r = (np.linalg.norm(sum(centred)) + 2.2e-16) / (sum(norms) + 2.2e-16)
            r = min(max(r, 2.2e-16), 1 - 2.2e-16)
            p = min(math.tan(math.pi / 2 * r), 10)
            w = np.array([(e / ws) ** p + 2.2e-16 for e in ed])
            w /= w.sum()
            desired = sum(w[n] * centred[n] / ed[n] for n in range(len(seq)))
            if np.linalg.norm(desired) > 0:
                desired = desired / np.linalg.norm(desired) * max(ed)
            fb = f[i - bd:i + bd + 1, j - bd:j + bd + 1]
            m1, m2 = (win * desired).sum(), (win * fb).sum()
            s1, s2 = (win * (desired - m1) ** 2).sum(), (win * (fb - m2) ** 2).sum()
            s12 = (win * (desired - m1) * (fb - m2)).sum()
            q.append((2 * s12 + c) / (s1 + s2 + c))
    return float(np.mean(q))


def test_mef_ssim_vectorised_equals_the_patch_loop():
    a, b = textured(12, 26, 30) * 0.5, np.clip(textured(13, 26, 30) * 1.5, 0, 255)
    f = (a + b) / 2
    expect = _mef_ssim_loop(f, [a, b])
    got = FM.mef_ssim_single_scale(*planes(f), planes(a, b)).item()
    assert got == pytest.approx(expect, rel=1e-9)


def test_mef_ssim_of_identical_images_is_one_and_noise_lowers_it():
    x, = planes(textured(14, 64, 64))
    assert FM.mef_ssim(x, x, x).item() == pytest.approx(1.0, abs=1e-3)
    noisy = x + torch.from_numpy(np.random.default_rng(2).normal(0, 30, x.shape))
    assert FM.mef_ssim(noisy, x, x).item() < 0.9
    assert math.isnan(FM.mef_ssim(x[:, :40], x[:, :40], x[:, :40]).item())  # 40 / 4 < 11


def test_qcb_is_one_for_identical_images_and_lower_for_blur():
    from scipy.ndimage import gaussian_filter

    img = textured(15, 64, 64)
    x, blurred = planes(img, gaussian_filter(img, 2.0))
    assert FM.qcb(x, x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert FM.qcb(blurred, x, x).item() < 0.9


def test_psnr_of_a_constant_offset():
    x, = planes(textured(16))
    assert FM.psnr(x + 10, x).item() == pytest.approx(10 * math.log10(255**2 / 100))


# ---------------------------------------------------------------- profiles and the torchmetrics wrappers


def test_profiles_change_numbers_exactly_as_documented():
    a, b = textured(17), textured(18)
    f = np.round((a + b) / 2)
    ta, tb, tf = as_rgb_tensor(a), as_rgb_tensor(b), as_rgb_tensor(f)
    d = {k: v.item() for k, v in score_images(tf, ta, tb, profile="default").items()}
    c = {k: v.item() for k, v in score_images(tf, ta, tb, profile="cddfuse").items()}
    h, w = f.shape
    # (float32 inputs k/255 come back as k +- 1e-5 in the default profile, rounded in cddfuse)
    assert c["MI"] == pytest.approx(d["MI"] * math.log(2), rel=1e-9)  # nats = bits x ln 2
    assert c["AG"] == pytest.approx(d["AG"] * (h - 1) * (w - 1) / (h * w), rel=1e-6)
    for same in ("EN", "SD", "SF", "SCD", "CC", "Nabf", "VIF", "MEF_SSIM"):
        assert c[same] == pytest.approx(d[same], rel=1e-6, abs=1e-6), same  # integer gray images: no rounding effect
    # Qabf's equality quirk (G = g_F where g_A == g_F exactly) and Qcb's rounding after min-max scaling see
    # the 1e-5 float noise of unrounded planes
    assert c["Qabf"] == pytest.approx(d["Qabf"], rel=1e-3)
    assert c["Qcb"] == pytest.approx(d["Qcb"], rel=1e-3)
    from skimage.metrics import structural_similarity

    assert c["SSIM"] == pytest.approx(structural_similarity(f, a, data_range=2.0) + structural_similarity(f, b, data_range=2.0), rel=1e-6)
    # a gray image gives the same numbers per channel as through the luma
    r = {k: v.item() for k, v in score_images(tf, ta, tb, profile="rgb").items()}
    for name in d:
        rel = 1e-3 if name in ("Qabf", "Qcb") else 1e-5  # the float-noise-sensitive two, as above
        assert r[name] == pytest.approx(d[name], rel=rel, abs=1e-6), name


def test_cddfuse_profile_rounds_the_luma_like_cv2_gray():
    rng = np.random.default_rng(3)
    rgb = torch.from_numpy(rng.integers(0, 256, (1, 3, 8, 8)).astype(np.float32) / 255)
    luma = (rgb.double() * 255 * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    assert torch.equal(get_profile("cddfuse").planes(rgb), luma.round())
    assert torch.allclose(get_profile("default").planes(rgb), luma)
    with pytest.raises(UserError, match="known profiles"):
        get_profile("matlab")


def test_collection_accumulates_means_and_needs_a_target_only_when_asked():
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 48, 48), torch.rand(3, 3, 48, 48)
    f, t = (a + b) / 2, (a + b) / 2 + 0.01
    coll = fusion_metrics("default", with_reference=True)
    assert set(coll.keys()) == set(metric_names(with_reference=True))
    coll.update(f[:2], a[:2], b[:2], target=t[:2])
    coll.update(f[2:], a[2:], b[2:], target=t[2:])
    out = coll.compute()
    per_image = score_images(f, a, b, t)
    for name, value in out.items():
        assert value.item() == pytest.approx(per_image[name].mean().item(), rel=1e-9), name
    assert out["PSNR"].item() == pytest.approx(40.0, abs=0.01)  # offset 0.01 of the range
    plain = fusion_metrics("default")
    assert "PSNR" not in plain.keys()
    with pytest.raises(ValueError, match="needs a target"):
        fusion_metrics(names=["PSNR"], with_reference=True)["PSNR"].update(f, a, b)


def test_metrics_skip_undefined_values_when_averaging():
    torch.manual_seed(1)
    big = [torch.rand(1, 3, 48, 48) for _ in range(3)]
    small = [torch.rand(1, 3, 32, 32) for _ in range(3)]
    vif = fusion_metrics(names=["VIF"])["VIF"]
    vif.update(*big)
    vif.update(*small)  # below 41x41: undefined, not counted
    assert vif.count.item() == 1
    assert vif.compute().item() == pytest.approx(score_images(*big)["VIF"].item())


def test_every_profile_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    for name in PROFILES:
        assert f"`{name}`" in doc
    for name in metric_names(with_reference=True):
        assert name in doc


def test_the_torch_filter_path_used_on_accelerators_gives_the_same_numbers(monkeypatch):
    a, b = textured(19, 64, 64), textured(20, 64, 64)
    f = np.round((a + b) / 2)
    ta, tb, tf = as_rgb_tensor(a), as_rgb_tensor(b), as_rgb_tensor(f)
    with_scipy = score_images(tf, ta, tb, tf, profile="cddfuse")
    monkeypatch.setattr(FM, "SCIPY_ON_CPU", False)
    with_torch = score_images(tf, ta, tb, tf, profile="cddfuse")
    for name, value in with_scipy.items():
        assert with_torch[name].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12), name
