"""Degradation operators do what their names say, on real photographs; the policy keeps its rules."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
import skimage.data

from mmaif_pl.data import degrade as D
from mmaif_pl.data.color import luma
from mmaif_pl.data.policy import CONTRADICTORY, TASK_OPERATORS, DegradePolicy, apply_records, degrade_pair
from mmaif_pl.errors import ConfigError


def _photo(name: str, size=(256, 256)) -> np.ndarray:
    img = getattr(skimage.data, name)()
    img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return _photo("astronaut")


@pytest.fixture(scope="module")
def rocket() -> np.ndarray:  # an outdoor scene with sky
    return _photo("rocket", (320, 224))


def gray(img):
    return luma(img)


def high_freq_energy(img):
    y = gray(img)
    return float(np.mean((y - cv2.GaussianBlur(y, (0, 0), 1.0)) ** 2))


def mean_gradient(img):
    y = gray(img)
    return float(np.mean(np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1))))


def dark_channel(img, r=15):
    return float(cv2.erode(img.min(axis=2), np.ones((r, r), np.uint8)).mean())


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", D.OPERATOR_NAMES)
@pytest.mark.parametrize("severity", D.SEVERITIES)
def test_operator_contract(astro, name, severity):
    out, rec = D.degrade(astro, name, rng(1), severity)
    assert out.shape == astro.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert set(rec) == {"name", "params", "source", "severity"} and rec["severity"] == severity
    assert not np.array_equal(out, astro)
    again, _ = D.apply_record(astro, rec)  # a record alone reproduces the degradation
    np.testing.assert_array_equal(out, again)
    assert callable(getattr(D, name)) and getattr(D, name).__doc__


def test_noise_raises_high_frequency_energy_more_when_heavier(astro):
    e0 = high_freq_energy(astro)
    e_mild = high_freq_energy(D.gaussian_noise(astro, rng(), "mild")[0])
    e_heavy = high_freq_energy(D.gaussian_noise(astro, rng(), "heavy")[0])
    assert e0 < e_mild < e_heavy


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur"])
def test_blur_lowers_mean_gradient(astro, name):
    g_mild = mean_gradient(D.degrade(astro, name, rng(), "mild")[0])
    g_heavy = mean_gradient(D.degrade(astro, name, rng(), "heavy")[0])
    assert g_heavy < g_mild < mean_gradient(astro)


@pytest.mark.parametrize("down", ["area", "linear", "cubic"])
@pytest.mark.parametrize("up", ["linear", "cubic"])
def test_downsample_loses_fine_detail(astro, down, up):
    # Mean gradient is the wrong measure here: aliasing and cubic overshoot keep edges steep while the fine
    # detail (energy above the reduced Nyquist frequency) is gone.
    e0 = high_freq_energy(astro)
    e_mild = high_freq_energy(D.downsample(astro, rng(), "mild", down=down, up=up)[0])
    e_heavy = high_freq_energy(D.downsample(astro, rng(), "heavy", down=down, up=up)[0])
    assert e_heavy < e_mild < 0.8 * e0


def test_motion_blur_is_directional(astro):
    dx = lambda y: np.abs(np.diff(y, axis=1)).mean()  # noqa: E731
    dy = lambda y: np.abs(np.diff(y, axis=0)).mean()  # noqa: E731
    y0 = gray(astro)
    horizontal = gray(D.motion_blur(astro, length=25, angle=0.0)[0])
    vertical = gray(D.motion_blur(astro, length=25, angle=90.0)[0])
    # motion smears along its direction: the gradient across it survives much better
    assert dx(horizontal) / dx(y0) < 0.6 * dy(horizontal) / dy(y0)
    assert dy(vertical) / dy(y0) < 0.6 * dx(vertical) / dx(y0)


def test_low_light_lowers_luminance_and_is_noisy(astro):
    out, rec = D.low_light(astro, rng(), "heavy")
    assert gray(out).mean() < 0.5 * gray(astro).mean()
    flat = D.low_light(np.full_like(astro, 0.5), rng(), "heavy")[0]
    assert flat.std() > 0.005  # camera noise, not just a darker copy


def test_over_exposure_raises_luminance_and_clips(astro):
    out, _ = D.over_exposure(astro, rng(), "heavy")
    assert gray(out).mean() > gray(astro).mean() + 0.1
    assert (out >= 1.0).mean() > 5 * (astro >= 1.0).mean() + 0.05


def test_contrast_operators(astro):
    lo, _ = D.low_contrast(astro, rng(), "heavy")
    hi, _ = D.high_contrast(astro, rng(), "heavy")
    assert gray(lo).std() < 0.5 * gray(astro).std() < gray(astro).std() < gray(hi).std()
    assert abs(gray(lo).mean() - gray(astro).mean()) < 0.02  # about the mean


def block_discontinuity(img):
    """Mean jump across 8x8 block borders minus the mean jump inside blocks (columns)."""
    d = np.abs(np.diff(gray(img), axis=1))
    border = d[:, 7::8].mean()
    inside = np.delete(d, np.s_[7::8], axis=1).mean()
    return border - inside


def test_jpeg_adds_8x8_block_discontinuities(astro):
    base = block_discontinuity(astro)
    out, _ = D.jpeg(astro, quality=8)
    assert block_discontinuity(out) > base + 0.005
    assert block_discontinuity(D.jpeg(astro, quality=95)[0]) < block_discontinuity(out)


def test_haze_raises_dark_channel_more_far_away(rocket):
    out, _ = D.haze(rocket, rng(), "heavy")
    assert dark_channel(out) > dark_channel(rocket) + 0.1
    lift = out.min(axis=2) - rocket.min(axis=2)
    h = rocket.shape[0]
    assert lift[: h // 4].mean() > lift[-h // 4:].mean()  # the top (far) is hazier than the bottom (near)
    assert gray(out).std() < gray(rocket).std()


def test_haze_depth_needs_no_network(rocket):
    d = D.haze_depth(rocket)
    assert d.shape == rocket.shape[:2] and 0 <= d.min() and d.max() <= 1
    assert d[0].mean() > d[-1].mean()


def test_ir_stripes_add_column_structure():
    ir = _photo("camera")
    out, rec = D.ir_stripes(ir, rng(), "heavy", orientation="vertical")
    diff = gray(out) - gray(ir)
    column_var = diff.mean(axis=0).var()  # per-column offsets
    row_var = diff.mean(axis=1).var()
    assert column_var > 20 * row_var and column_var > 1e-4
    assert D.is_gray(out)  # stripes on a gray IR frame keep it gray


def _bright_structure(clean, out):
    """Fraction of pixels made clearly brighter than the clean image."""
    return float((gray(out) - gray(clean) > 0.08).mean())


def test_rain_adds_bright_oriented_streaks(rocket):
    out, rec = D.rain(rocket, rng(), "heavy", angle=0.0, veil=0.0)
    assert _bright_structure(rocket, out) > 0.03
    added = np.clip(gray(out) - gray(rocket), 0, None)
    vert = np.mean(added[4:] * added[:-4])  # streaks are long and thin: strong vertical autocorrelation at lag 4
    horiz = np.mean(added[:, 4:] * added[:, :-4])
    assert vert > 3 * horiz


def test_snow_adds_bright_speckles(rocket):
    out, _ = D.snow(rocket, rng(), "heavy", veil=0.0)
    added = np.clip(gray(out) - gray(rocket), 0, None)
    assert _bright_structure(rocket, out) > 0.01
    n_flakes, _ = cv2.connectedComponents((added > 0.15).astype(np.uint8))
    assert n_flakes > 30  # many separate flakes, not a uniform brightening


def test_gray_images_stay_gray():
    ir = _photo("camera")
    for name in ("gaussian_noise", "jpeg", "low_light", "downsample"):
        assert D.is_gray(D.degrade(ir, name, rng(), "heavy")[0]), name


def test_explicit_params_and_errors(astro):
    out, rec = D.gaussian_blur(astro, sigma=2.0)
    assert rec["params"] == {"sigma": 2.0} and rec["severity"] == "custom"
    with pytest.raises(ConfigError, match="fog.*valid: gaussian_noise"):
        D.degrade(astro, "fog", rng())
    with pytest.raises(ConfigError, match=r"jpeg.quality.*\[1, 100\]"):
        D.sample_params("jpeg", rng(), "mild", {"quality": 300})
    with pytest.raises(ConfigError, match="unknown parameter.*valid for jpeg: quality"):
        D.sample_params("jpeg", rng(), "mild", {"q": 30})
    with pytest.raises(ConfigError, match="severity 'extreme'.*mild, moderate, heavy"):
        D.sample_params("jpeg", rng(), "extreme")


# ------------------------------------------------------------------------------------------------ policy


def test_no_contradictory_pairs_over_10000_draws():
    policy = DegradePolicy(clean_prob=0.0, count_weights=[0, 0, 1])
    r = rng(3)
    counts = Counter()
    for i in range(10_000):
        names = policy.choose(("vif", "mef", "mff")[i % 3], r)
        counts[len(names)] += 1
        for pair in CONTRADICTORY:
            assert not pair <= set(names), names
    assert counts[3] == 10_000


def test_count_weights_and_clean_probability():
    policy = DegradePolicy(clean_prob=0.25, count_weights=[1, 1, 1])
    r = rng(4)
    lengths = Counter(len(policy.choose("mff", r)) for _ in range(4000))
    assert abs(lengths[0] / 4000 - 0.25) < 0.03
    assert all(abs(lengths[n] / 4000 - 0.25) < 0.03 for n in (1, 2, 3))


def test_vif_policy_keeps_ir_physical(astro):
    policy = DegradePolicy(clean_prob=0.0, count_weights=[0, 0, 1])
    r = rng(5)
    seen_b = set()
    for _ in range(2000):
        recs = policy.sample("vif", r)
        b_names = {x["name"] for x in recs if x["source"] == "b"}
        a_names = {x["name"] for x in recs if x["source"] == "a"}
        seen_b |= b_names
        assert not b_names & {"rain", "snow", "low_light", "over_exposure"}
        assert "ir_stripes" not in a_names
        for x in recs:
            if x["name"] == "haze" and x["source"] == "b":
                assert x["params"]["ir"] == "blur"
    assert {"ir_stripes", "haze", "gaussian_noise"} <= seen_b
    assert [x["source"] for x in policy.records_for("vif", ["rain"], r)] == ["a"]
    assert [x["source"] for x in policy.records_for("vif", ["ir_stripes"], r)] == ["b"]
    assert [x["source"] for x in policy.records_for("vif", ["gaussian_noise"], r)] == ["a", "b"]


def test_vif_haze_on_ir_is_a_mild_blur():
    ir = _photo("camera")
    policy = DegradePolicy()
    recs = policy.records_for("vif", ["haze"], rng(6), "heavy")
    vis, out = apply_records(_photo("rocket"), ir, recs)
    assert mean_gradient(out) < mean_gradient(ir)
    assert abs(gray(out).mean() - gray(ir).mean()) < 0.01  # no fog veil on the thermal image


@pytest.mark.parametrize("task", ["mef", "mff"])
def test_mef_mff_get_identical_chains(astro, task):
    policy = DegradePolicy(clean_prob=0.0)
    r = rng(7)
    for _ in range(300):
        recs = policy.sample(task, r)
        a = [x for x in recs if x["source"] == "a"]
        b = [x for x in recs if x["source"] == "b"]
        assert [x["name"] for x in a] == [x["name"] for x in b]
        for xa, xb in zip(a, b):
            pa = {k: v for k, v in xa["params"].items() if not (k == "seed" and xa["name"] in ("gaussian_noise", "low_light"))}
            pb = {k: v for k, v in xb["params"].items() if not (k == "seed" and xb["name"] in ("gaussian_noise", "low_light"))}
            assert pa == pb and xa["severity"] == xb["severity"]
    assert "ir_stripes" not in TASK_OPERATORS[task]
    # same parameters on both sources: identical inputs give identical outputs for a deterministic chain
    recs = policy.records_for(task, ["haze", "jpeg"], rng(8))
    a2, b2 = apply_records(astro, astro.copy(), recs)
    np.testing.assert_array_equal(a2, b2)


def test_degrade_pair_is_a_function_of_the_generator(astro):
    x = degrade_pair(astro, astro, "vif", rng(9))
    y = degrade_pair(astro, astro, "vif", rng(9))
    assert x[2] == y[2]
    np.testing.assert_array_equal(x[0], y[0])
    np.testing.assert_array_equal(x[1], y[1])


def test_policy_config_errors():
    with pytest.raises(ConfigError, match="'fog' in degrade.operators; valid: gaussian_noise"):
        DegradePolicy(operators={"fog": 1.0})
    with pytest.raises(ConfigError, match="degrade.severity.*mixed"):
        DegradePolicy(severity="extreme")
    with pytest.raises(ConfigError, match=r"degrade.params.haze.beta.*out of range.*\[0.0, 6.0\]"):
        DegradePolicy(params={"haze": {"beta": [1.0, 9.0]}})
    with pytest.raises(ConfigError, match="clean_prob"):
        DegradePolicy(clean_prob=1.5)
    with pytest.raises(ConfigError, match="count_weights"):
        DegradePolicy(count_weights=[0, 0, 0])
    with pytest.raises(ConfigError, match="does not apply to mef"):
        DegradePolicy().records_for("mef", ["ir_stripes"], rng())


def test_policy_from_loaded_config():
    from mmaif_pl import config

    cfg = config.load([], ["degrade.operators.rain=1", "degrade.operators.snow=1", "degrade.params.rain.length=[30,40]",
                           "degrade.clean_prob=0"])
    policy = DegradePolicy.from_config(cfg.degrade)
    r = rng(10)
    for _ in range(100):
        recs = policy.sample("mff", r)
        assert {x["name"] for x in recs} <= {"rain", "snow"} and recs
        assert all(30 <= x["params"]["length"] <= 40 for x in recs if x["name"] == "rain")
    bad = config.load([], ["degrade.params.rain.length=[0,500]"])
    with pytest.raises(ConfigError, match=r"degrade.params.rain.length.*valid range: \[2, 101\]"):
        DegradePolicy.from_config(bad.degrade)
