"""Degradation operators: what a camera, the weather or a codec does to a clean source image.

Every operator is a pure function of an HxWx3 float32 image in [0, 1] and of its parameters; the
parameters are either given explicitly or drawn from a severity preset (mild / moderate / heavy) with a
`numpy.random.Generator`. Operators whose effect has a random pattern (noise, rain, snow, stripes) take
an integer `seed` among their parameters, so a record alone reproduces the exact degradation:

    img2, rec = gaussian_noise(img, rng, severity="heavy")
    img3, _ = apply_record(img, rec)          # identical to img2

Records are plain JSON-able dicts `{"name", "params", "source", "severity"}` (docs/interfaces.md).
Gray images (IR, gray multi-focus sources, stored as three equal channels) stay gray: noise and JPEG are
applied to the luminance only.

The sampler and the per-task policy (which operators, how many, which source) live in `policy.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import cv2
import numpy as np

from ..errors import ConfigError
from . import color
from .color import luma

SEVERITIES = ("mild", "moderate", "heavy")
GAMMA = 2.2  # sRGB <-> linear light, the usual power-law approximation

Range = Union[tuple, list]  # (lo, hi) numbers: uniform draw; a list of strings: a choice


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def is_gray(img: np.ndarray) -> bool:
    """color.is_gray on a pixel subsample: the operators ask it of every image they degrade."""
    return color.is_gray(img[::7, ::7])


def _noise_like(img: np.ndarray, rng: np.random.Generator, gray: bool) -> np.ndarray:
    """Standard normal noise, one plane broadcast over channels for gray images."""
    h, w = img.shape[:2]
    return rng.standard_normal((h, w, 1 if gray else 3), dtype=np.float32)


def _line_kernel(length: float, angle_deg: float, width: float = 1.0, normalise: bool = True) -> np.ndarray:
    """An anti-aliased line through the centre of an odd square kernel (motion blur, rain streaks)."""
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    half = (length - 1) / 2
    shift = 4  # sub-pixel endpoints (cv2 fixed point, 1/16 px)
    p0 = (int(round((c - half * dx) * 16)), int(round((c - half * dy) * 16)))
    p1 = (int(round((c + half * dx) * 16)), int(round((c + half * dy) * 16)))
    cv2.line(k, p0, p1, 1.0, max(1, int(round(width))), cv2.LINE_AA, shift)
    if normalise:
        k /= max(float(k.sum()), 1e-8)
    return k


def _to_linear(img: np.ndarray) -> np.ndarray:
    return np.power(np.clip(img, 0, 1), GAMMA, dtype=np.float32)


def _to_display(lin: np.ndarray) -> np.ndarray:
    return np.power(np.clip(lin, 0, 1), 1 / GAMMA, dtype=np.float32)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0, out=img.astype(np.float32, copy=False))


# ----------------------------------------------------------------------------------------------------
# The operators, applied with explicit parameters. `p` is the full parameter dict.
# ----------------------------------------------------------------------------------------------------


def _gaussian_noise(img: np.ndarray, p: dict) -> np.ndarray:
    """Additive white Gaussian sensor noise of standard deviation `sigma`."""
    rng = np.random.default_rng(p["seed"])
    return _finish(img + np.float32(p["sigma"]) * _noise_like(img, rng, is_gray(img)))


def _gaussian_blur(img: np.ndarray, p: dict) -> np.ndarray:
    """Out-of-focus / lens softness: an isotropic Gaussian point-spread function."""
    sigma = float(p["sigma"])
    ksize = min(int(np.ceil(3 * sigma)) * 2 + 1, 61)
    return _finish(cv2.GaussianBlur(img, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT))


def _motion_blur(img: np.ndarray, p: dict) -> np.ndarray:
    """Camera shake / object motion during exposure: a straight line PSF of `length` px at `angle`."""
    k = _line_kernel(float(p["length"]), float(p["angle"]))
    return _finish(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT))


_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def _downsample(img: np.ndarray, p: dict) -> np.ndarray:
    """Low resolution: shrink by `scale`, then enlarge back to the original size (lost detail, aliasing)."""
    h, w = img.shape[:2]
    s = float(p["scale"])
    small = cv2.resize(img, (max(1, round(w / s)), max(1, round(h / s))), interpolation=_INTERP[p["down"]])
    return _finish(cv2.resize(small, (w, h), interpolation=_INTERP[p["up"]]))


def _jpeg(img: np.ndarray, p: dict) -> np.ndarray:
    """Lossy JPEG compression at `quality` (8x8 blocking, ringing, chroma bleeding)."""
    gray = is_gray(img)
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    u8 = u8[..., 0] if gray else u8[..., ::-1]  # OpenCV wants BGR
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(p["quality"])])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise RuntimeError("JPEG encoding failed")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    out = np.repeat(out[..., None], 3, axis=2) if gray else out[..., ::-1]
    return out.astype(np.float32) / 255.0


def _rain(img: np.ndarray, p: dict) -> np.ndarray:
    """Rain: bright, semi-transparent slanted streaks, plus the veil that heavy rain puts on the scene."""
    rng = np.random.default_rng(p["seed"])
    h, w = img.shape[:2]
    drops = (rng.random((h, w), dtype=np.float32) < p["density"]).astype(np.float32)
    drops *= rng.uniform(0.4, 1.0, (h, w)).astype(np.float32)  # drops at different distances
    angle = 90.0 + float(p["angle"])  # degrees from the vertical
    kernel = _line_kernel(p["length"], angle, p["width"], normalise=False)
    c = (kernel.shape[0] - 1) / 2
    yy, xx = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
    kernel *= np.exp(-2.0 * ((yy - c) ** 2 + (xx - c) ** 2) / max(c, 1.0) ** 2)  # streaks fade at both ends
    streaks = cv2.filter2D(drops, -1, kernel)
    streaks = cv2.GaussianBlur(np.clip(streaks, 0, 1), (3, 3), 0.5)[..., None] * np.float32(p["opacity"])
    out = img * (1 - streaks) + streaks * np.float32(0.92)
    veil = np.float32(p["veil"])
    return _finish(out * (1 - veil) + veil * np.float32(0.75))


def _snow(img: np.ndarray, p: dict) -> np.ndarray:
    """Falling snow: soft white flakes in a far (small, dense) and a near (large, sparse) layer, brightened air."""
    rng = np.random.default_rng(p["seed"])
    h, w = img.shape[:2]
    flakes = np.zeros((h, w), np.float32)
    for density, size in ((p["density"], p["size"] * 0.5), (p["density"] * 0.08, p["size"] * 1.6)):
        seeds = (rng.random((h, w), dtype=np.float32) < density).astype(np.float32)
        seeds *= rng.uniform(0.6, 1.0, (h, w)).astype(np.float32)
        blob = cv2.GaussianBlur(seeds, (0, 0), size) * np.float32(2 * np.pi * size**2)  # peak ~ 1
        blob = cv2.filter2D(blob, -1, _line_kernel(1 + 2 * size, 90 + float(p["angle"])))  # falling motion
        flakes = np.maximum(flakes, np.clip(blob * 1.3, 0, 1))
    veil = np.float32(p["veil"])
    out = img * (1 - veil) + veil * np.float32(0.85)
    f = flakes[..., None]
    return _finish(out * (1 - f) + f * np.float32(0.97))


def haze_depth(img: np.ndarray) -> np.ndarray:
    """A network-free relative depth in [0, 1] (1 = far): a vertical position prior (the top of an outdoor
    scene is usually farther) blended with the smoothed dark channel (bright, colourless regions such as sky
    tend to be far). Good enough for haze that thickens with distance; not a metric depth."""
    h, w = img.shape[:2]
    rows = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    r = max(3, int(round(min(h, w) / 32)) | 1)
    darkest = np.minimum(np.minimum(img[..., 0], img[..., 1]), img[..., 2])  # img.min(axis=2), 30x faster
    dark = cv2.erode(darkest, cv2.getStructuringElement(cv2.MORPH_RECT, (r, r)))
    dark = cv2.GaussianBlur(dark, (0, 0), max(h, w) / 24)
    lo, hi = float(dark.min()), float(dark.max())
    dark = (dark - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(dark)
    return 0.6 * rows + 0.4 * dark


def _haze(img: np.ndarray, p: dict) -> np.ndarray:
    """Haze / fog by atmospheric scattering in linear light: I = J t + A (1 - t), t = exp(-beta d)."""
    d = 0.15 + 0.85 * haze_depth(img)  # nothing is at zero distance
    t = np.exp(-np.float32(p["beta"]) * d)[..., None]
    lin = _to_linear(img)
    # Airlight follows the scene's light level (HazeRD: a multiple of the mean linear gray level), so dusk
    # scenes get a dim fog and daylight scenes a bright one; `tint` makes it slightly bluish.
    level = min(float(p["airlight"]) * float(lin.mean()), 1.0)
    airlight = np.clip(level * np.array([1.0, 1.0, 1.0 + float(p["tint"])], np.float32), 0, 1)
    lin = lin * t + airlight * (1 - t)
    return _finish(_to_display(lin))


def _ir_haze(img: np.ndarray, p: dict) -> np.ndarray:
    """What haze does to a thermal image: long waves pass through fog, leaving only a mild blur."""
    return _gaussian_blur(img, {"sigma": p["ir_sigma"]})


def _low_light(img: np.ndarray, p: dict) -> np.ndarray:
    """Under-exposure at night: gamma and gain darken the scene, then shot + read noise and 8-bit quantisation."""
    rng = np.random.default_rng(p["seed"])
    dark = np.float32(p["gain"]) * np.power(np.clip(img, 0, 1), np.float32(p["gamma"]), dtype=np.float32)
    gray = is_gray(img)
    std = np.sqrt(np.float32(p["shot"]) * dark + np.float32(p["read"]) ** 2)  # Poisson-Gaussian model
    noisy = np.clip(dark + std * _noise_like(img, rng, gray), 0, 1)
    return np.round(noisy * 255) / np.float32(255)


def _over_exposure(img: np.ndarray, p: dict) -> np.ndarray:
    """Over-exposure: linear-light gain with the sensor's clipping, which burns out the highlights."""
    return _finish(_to_display(_to_linear(img) * np.float32(p["gain"])))


def _contrast(img: np.ndarray, p: dict) -> np.ndarray:
    """Contrast scaled about the mean luminance, out = mu + f (x - mu), clipped."""
    mu = np.float32(luma(img).mean())
    return _finish(mu + np.float32(p["factor"]) * (img - mu))


def _ir_stripes(img: np.ndarray, p: dict) -> np.ndarray:
    """Fixed-pattern stripe noise of an uncooled IR focal-plane array: per-column offset and gain, dark lines."""
    rng = np.random.default_rng(p["seed"])
    vertical = p["orientation"] == "vertical"
    work = img if vertical else img.transpose(1, 0, 2)
    n = work.shape[1]
    offset = rng.normal(0, p["sigma"], n).astype(np.float32)
    gain = rng.normal(1, p["gain_sigma"], n).astype(np.float32)
    dark = (rng.random(n) < p["dark_fraction"]).astype(np.float32)
    dark = np.clip(np.convolve(dark, np.ones(int(p["dark_width"])), mode="same"), 0, 1)  # a few px wide
    gain *= 1 - np.float32(p["dark_depth"]) * dark
    out = work * gain[None, :, None] + offset[None, :, None]
    return _finish(out if vertical else out.transpose(1, 0, 2))


# ----------------------------------------------------------------------------------------------------
# Registry: parameter ranges per severity and the hard limits a config may not leave.
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorSpec:
    name: str
    fn: Callable[[np.ndarray, dict], np.ndarray]
    ranges: dict  # severity -> {param: (lo, hi) or [choices]}
    limits: dict  # param -> (lo, hi) or [choices]: what a config may ask for
    ints: tuple = ()  # params drawn as integers
    seeded: bool = False  # takes a pattern `seed`

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


def _sev(mild: dict, moderate: dict, heavy: dict, common: Optional[dict] = None) -> dict:
    common = common or {}
    return {"mild": {**common, **mild}, "moderate": {**common, **moderate}, "heavy": {**common, **heavy}}


_CHOICE_INTERP = ["area", "linear", "cubic"]

OPERATORS: dict[str, OperatorSpec] = {
    s.name: s
    for s in [
        OperatorSpec(
            "gaussian_noise", _gaussian_noise,
            _sev({"sigma": (0.02, 0.04)}, {"sigma": (0.04, 0.07)}, {"sigma": (0.07, 0.12)}),
            {"sigma": (0.0, 0.5)}, seeded=True),
        OperatorSpec(
            "gaussian_blur", _gaussian_blur,
            _sev({"sigma": (0.8, 1.4)}, {"sigma": (1.4, 2.4)}, {"sigma": (2.4, 4.0)}),
            {"sigma": (0.1, 10.0)}),
        OperatorSpec(
            "motion_blur", _motion_blur,
            _sev({"length": (5, 9)}, {"length": (9, 17)}, {"length": (17, 31)}, {"angle": (0.0, 180.0)}),
            {"length": (2, 101), "angle": (-360.0, 360.0)}),
        OperatorSpec(
            "downsample", _downsample,
            _sev({"scale": (1.5, 2.0)}, {"scale": (2.0, 3.0)}, {"scale": (3.0, 4.0)},
                 {"down": _CHOICE_INTERP, "up": ["linear", "cubic"]}),
            {"scale": (1.0, 16.0), "down": _CHOICE_INTERP, "up": _CHOICE_INTERP}),
        OperatorSpec(
            "jpeg", _jpeg,
            _sev({"quality": (35, 60)}, {"quality": (18, 35)}, {"quality": (5, 18)}),
            {"quality": (1, 100)}, ints=("quality",)),
        OperatorSpec(
            "rain", _rain,
            _sev({"density": (0.001, 0.002), "length": (10, 20), "opacity": (0.3, 0.45), "veil": (0.0, 0.04),
                  "width": (1, 1)},
                 {"density": (0.002, 0.004), "length": (16, 30), "opacity": (0.4, 0.6), "veil": (0.04, 0.1),
                  "width": (1, 1)},
                 {"density": (0.003, 0.006), "length": (25, 45), "opacity": (0.55, 0.8), "veil": (0.1, 0.2),
                  "width": (1, 1)},
                 {"angle": (-20.0, 20.0)}),
            {"density": (0.0, 0.1), "length": (2, 101), "opacity": (0.0, 1.0), "veil": (0.0, 0.8),
             "angle": (-60.0, 60.0), "width": (1, 5)}, ints=("width",), seeded=True),
        OperatorSpec(
            "snow", _snow,
            _sev({"density": (0.001, 0.002), "size": (0.8, 1.2), "veil": (0.0, 0.06)},
                 {"density": (0.002, 0.004), "size": (1.0, 1.6), "veil": (0.06, 0.14)},
                 {"density": (0.004, 0.008), "size": (1.3, 2.2), "veil": (0.14, 0.28)},
                 {"angle": (-25.0, 25.0)}),
            {"density": (0.0, 0.05), "size": (0.3, 6.0), "veil": (0.0, 0.8), "angle": (-60.0, 60.0)},
            seeded=True),
        OperatorSpec(
            "haze", _haze,
            _sev({"beta": (0.15, 0.35)}, {"beta": (0.35, 0.8)}, {"beta": (0.8, 1.6)},
                 {"airlight": (3.0, 5.0), "tint": (0.0, 0.06), "ir_sigma": (1.0, 2.0)}),
            {"beta": (0.0, 6.0), "airlight": (0.5, 20.0), "tint": (-0.2, 0.2), "ir_sigma": (0.1, 5.0)}),
        OperatorSpec(
            "low_light", _low_light,
            _sev({"gamma": (1.2, 1.6), "gain": (0.55, 0.75), "shot": (0.001, 0.003), "read": (0.004, 0.008)},
                 {"gamma": (1.6, 2.2), "gain": (0.35, 0.55), "shot": (0.002, 0.005), "read": (0.006, 0.012)},
                 {"gamma": (2.2, 3.0), "gain": (0.15, 0.35), "shot": (0.003, 0.008), "read": (0.01, 0.02)}),
            {"gamma": (1.0, 5.0), "gain": (0.02, 1.0), "shot": (0.0, 0.05), "read": (0.0, 0.1)}, seeded=True),
        OperatorSpec(
            "over_exposure", _over_exposure,
            _sev({"gain": (1.4, 1.9)}, {"gain": (1.9, 2.8)}, {"gain": (2.8, 4.5)}),
            {"gain": (1.0, 20.0)}),
        OperatorSpec(
            "low_contrast", _contrast,
            _sev({"factor": (0.6, 0.75)}, {"factor": (0.4, 0.6)}, {"factor": (0.2, 0.4)}),
            {"factor": (0.05, 1.0)}),
        OperatorSpec(
            "high_contrast", _contrast,
            _sev({"factor": (1.3, 1.6)}, {"factor": (1.6, 2.1)}, {"factor": (2.1, 2.8)}),
            {"factor": (1.0, 5.0)}),
        OperatorSpec(
            "ir_stripes", _ir_stripes,
            _sev({"sigma": (0.01, 0.025), "gain_sigma": (0.01, 0.02), "dark_fraction": (0.0, 0.02),
                  "dark_depth": (0.1, 0.25)},
                 {"sigma": (0.025, 0.045), "gain_sigma": (0.02, 0.04), "dark_fraction": (0.02, 0.04),
                  "dark_depth": (0.2, 0.4)},
                 {"sigma": (0.045, 0.08), "gain_sigma": (0.04, 0.07), "dark_fraction": (0.04, 0.08),
                  "dark_depth": (0.3, 0.6)},
                 {"dark_width": (1, 3), "orientation": ["vertical"] * 4 + ["horizontal"]}),
            {"sigma": (0.0, 0.3), "gain_sigma": (0.0, 0.3), "dark_fraction": (0.0, 0.5), "dark_depth": (0.0, 1.0),
             "dark_width": (1, 16), "orientation": ["vertical", "horizontal"]},
            ints=("dark_width",), seeded=True),
    ]
}
OPERATOR_NAMES = tuple(OPERATORS)


# ----------------------------------------------------------------------------------------------------
# Validation, sampling, application
# ----------------------------------------------------------------------------------------------------


def check_operator(name: str, where: str = "") -> OperatorSpec:
    if name not in OPERATORS:
        where = f" {where}" if where else ""
        raise ConfigError(f"unknown degradation '{name}'{where}; valid: {', '.join(OPERATOR_NAMES)}")
    return OPERATORS[name]


def check_severity(severity: str, where: str = "severity", extra: tuple = ()) -> str:
    if severity not in SEVERITIES + tuple(extra):
        raise ConfigError(f"unknown {where} '{severity}'; valid: {', '.join(SEVERITIES + tuple(extra))}")
    return severity


def check_param(name: str, key: str, value, where: str = "") -> None:
    """Raise ConfigError unless `value` (a number, a (lo, hi) range, or a choice / list of choices) is valid."""
    spec = check_operator(name)
    label = f"{where}{name}.{key}"
    if key not in spec.limits:
        raise ConfigError(f"unknown parameter '{label}'; valid for {name}: {', '.join(spec.limits)}")
    limit = spec.limits[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(limit, list):  # categorical
        bad = [v for v in values if v not in limit]
        if bad or not values:
            raise ConfigError(f"bad value {bad or value!r} for '{label}'; valid choices: {', '.join(limit)}")
        return
    lo, hi = limit
    if not values or len(values) > 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"'{label}' must be a number or a [lo, hi] range within [{lo}, {hi}], got {value!r}")
    if any(not (lo <= v <= hi) for v in values) or (len(values) == 2 and values[0] > values[1]):
        raise ConfigError(f"'{label}' = {value!r} is out of range; valid range: [{lo}, {hi}]")


def sample_params(name: str, rng: np.random.Generator, severity: str = "moderate",
                  overrides: Optional[dict] = None) -> dict:
    """Parameters for one application: the severity preset's ranges, replaced by `overrides` where given
    (a number fixes a parameter, a [lo, hi] pair replaces its range, a list of strings its choices)."""
    spec = check_operator(name)
    ranges = dict(spec.ranges[check_severity(severity)])
    for key, value in (overrides or {}).items():
        check_param(name, key, value)
        ranges[key] = value
    params: dict = {}
    for key in sorted(ranges):  # fixed order: the same Generator state gives the same parameters
        r = ranges[key]
        if isinstance(r, (list, tuple)) and r and isinstance(r[0], str):
            params[key] = str(r[int(rng.integers(len(r)))])
        elif isinstance(r, (list, tuple)):
            lo, hi = (float(r[0]), float(r[-1]))
            if key in spec.ints:
                params[key] = int(rng.integers(int(round(lo)), int(round(hi)) + 1))
            else:
                params[key] = round(float(rng.uniform(lo, hi)), 5)
        else:
            params[key] = int(r) if key in spec.ints else r
    if spec.seeded:
        params["seed"] = int(rng.integers(2**31 - 1))
    return params


def make_record(name: str, params: dict, source: str = "a", severity: str = "moderate") -> dict:
    return {"name": name, "params": dict(params), "source": source, "severity": severity}


def apply_record(img: np.ndarray, record: dict) -> tuple[np.ndarray, dict]:
    """Apply the degradation a record describes (exactly reproducible). A haze record for an IR source
    (`params["ir"] == "blur"`) applies the thermal substitute, a mild blur."""
    spec = check_operator(record["name"])
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    fn = _ir_haze if record["name"] == "haze" and record["params"].get("ir") == "blur" else spec.fn
    return fn(img, record["params"]), record


def degrade(img: np.ndarray, name: str, rng: Optional[np.random.Generator] = None, severity: str = "moderate",
            source: str = "a", **params) -> tuple[np.ndarray, dict]:
    """Apply operator `name`: parameters not given explicitly are drawn from the `severity` preset with `rng`."""
    spec = check_operator(name)
    missing = set(spec.ranges["mild"]) - set(params) or (spec.seeded and "seed" not in params)
    if missing and rng is None:
        raise ValueError(f"{name}: give a Generator or all parameters ({', '.join(spec.ranges['mild'])})")
    drawn = sample_params(name, rng, severity, {k: v for k, v in params.items() if k != "seed"}) if missing else {}
    full = {**drawn, **params}
    sev = severity if missing else "custom"
    return apply_record(img, make_record(name, full, source, sev))


def _public(name: str):
    def op(img: np.ndarray, rng: Optional[np.random.Generator] = None, severity: str = "moderate",
           source: str = "a", **params) -> tuple[np.ndarray, dict]:
        return degrade(img, name, rng, severity, source, **params)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = OPERATORS[name].doc
    return op


gaussian_noise = _public("gaussian_noise")
gaussian_blur = _public("gaussian_blur")
motion_blur = _public("motion_blur")
downsample = _public("downsample")
jpeg = _public("jpeg")
rain = _public("rain")
snow = _public("snow")
haze = _public("haze")
low_light = _public("low_light")
over_exposure = _public("over_exposure")
low_contrast = _public("low_contrast")
high_contrast = _public("high_contrast")
ir_stripes = _public("ir_stripes")
