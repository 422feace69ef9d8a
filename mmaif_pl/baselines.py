"""Classical "restoration + fusion" baselines: the cascade that all-in-one fusion claims to beat.

Restoration is chosen per source by the degradation records of the sample, as an oracle would (it knows
the operator and its parameters): non-local means for noise, Wiener deconvolution for known blur, unsharp
masking for lost resolution, dark-channel-prior dehazing, inverse tone curves for low light / exposure /
contrast, veil removal and median filtering for rain and snow, NLM deblocking for JPEG, column-offset
removal for IR stripes. Fusion rules: average, Laplacian pyramid (max-abs details), guided-filter fusion
(Li et al. 2013), Mertens exposure fusion (OpenCV) and a focus-measure rule; `auto` picks per task.

Python use (the latency benchmark): `restore_and_fuse(a, b, task, ["gaussian_noise", "haze"])` on two
HxWx3 float32 arrays in [0, 1]. Command: `mmaif baseline --prepared prepared/test --out DIR`, which
writes `<DIR>/<id>.png` for every sample so `mmaif evaluate --prepared` scores it like a model (or `--dataset
ROOT`: a benchmark's pairs, fused as they are, for `mmaif evaluate --dataset`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np

from .data.color import gray_of, is_gray, luma
from .data.io import write_image
from .data.sources import PairRecord, discover, load_pair
from .errors import UserError

FUSION_RULES = ("auto", "average", "laplacian", "guided", "mertens", "focus")
AUTO_RULE = {"vif": "guided", "mef": "mertens", "mff": "focus"}
Record = Union[str, dict]

try:  # the exact operators of the degradation pipeline, when present (the oracle knows the PSF and the gamma)
    from .data.degrade import GAMMA as _DISPLAY_GAMMA
    from .data.degrade import _line_kernel
except ImportError:  # pragma: no cover - the data package is part of the project
    _DISPLAY_GAMMA = 2.2
    _line_kernel = None


# ----------------------------------------------------------------------------------------------------
# Small tools
# ----------------------------------------------------------------------------------------------------


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _f32(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a gray guide: q = mean(a) I + mean(b), a = cov(I,p) / (var(I) + eps)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    guide = guide.astype(np.float32)
    src = src.astype(np.float32)
    mean_i, mean_p = box(guide), box(src)
    a = (box(guide * src) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


# ----------------------------------------------------------------------------------------------------
# Restoration, one operator each (img: HxWx3 float32 in [0, 1])
# ----------------------------------------------------------------------------------------------------


def denoise_nlm(img: np.ndarray, sigma: Optional[float] = None) -> np.ndarray:
    """Non-local means (OpenCV) with filter strength from the noise level (estimated when not known)."""
    if sigma is None:
        sigma = estimate_noise_sigma(img)
    h = float(np.clip(sigma * 255 * 0.9, 2.0, 40.0))
    if is_gray(img):
        out = cv2.fastNlMeansDenoising(_u8(img[..., 0]), None, h, 7, 21)
        return np.repeat(_f32(out)[..., None], 3, axis=2)
    return _f32(cv2.fastNlMeansDenoisingColored(_u8(img), None, h, h, 7, 21))


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Immerkaer's estimator: sigma = sqrt(pi/2) / (6 (W-2)(H-2)) sum |I * N|, N the 3x3 Laplacian difference mask."""
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(luma(img), -1, mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).sum() / (6 * response.size))


def wiener_deconvolve(img: np.ndarray, psf: np.ndarray, balance: float = 0.01) -> np.ndarray:
    """Wiener deconvolution X = (1 + balance) conj(H) Y / (|H|^2 + balance) with a known PSF, on a reflect-padded image."""
    pad = psf.shape[0]
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    h, w = padded.shape[:2]
    kernel = np.zeros((h, w), np.float32)
    kh, kw = psf.shape
    kernel[:kh, :kw] = psf / psf.sum()
    kernel = np.roll(kernel, (-(kh // 2), -(kw // 2)), axis=(0, 1))  # centre the PSF at the origin
    H = np.fft.rfft2(kernel)
    filt = np.conj(H) / (np.abs(H) ** 2 + balance) * (1 + balance)  # unit gain at DC: no loss of brightness
    out = np.stack([np.fft.irfft2(np.fft.rfft2(padded[..., c]) * filt, s=(h, w)) for c in range(3)], axis=2)
    return np.clip(out[pad:-pad, pad:-pad], 0, 1).astype(np.float32)


def gaussian_psf(sigma: float) -> np.ndarray:
    size = min(int(np.ceil(3 * sigma)) * 2 + 1, 61)
    g = cv2.getGaussianKernel(size, sigma)
    return (g @ g.T).astype(np.float32)


def motion_psf(length: float, angle: float) -> np.ndarray:
    if _line_kernel is not None:
        return _line_kernel(length, angle)
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c, half = (size - 1) / 2, (length - 1) / 2
    dx, dy = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    cv2.line(k, (int(round(c - half * dx)), int(round(c - half * dy))),
             (int(round(c + half * dx)), int(round(c + half * dy))), 1.0, 1, cv2.LINE_AA)
    return k / max(float(k.sum()), 1e-8)


def unsharp(img: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img + amount * (img - blur), 0, 1).astype(np.float32)


def dehaze_dark_channel(img: np.ndarray, patch: int = 15, omega: float = 0.95, t_min: float = 0.1) -> np.ndarray:
    """He et al.'s dark channel prior: airlight A from the brightest 0.1% of the dark channel, transmission
    t = 1 - omega * dark(I / A), refined with a guided filter; J = (I - A) / max(t, t_min) + A."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(img.min(axis=2), kernel)
    n = max(1, dark.size // 1000)
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = np.maximum(img.reshape(-1, 3)[idx].mean(0), 1e-3)
    t = 1 - omega * cv2.erode((img / airlight).min(axis=2), kernel)
    t = guided_filter(luma(img), t.astype(np.float32), 30, 1e-3)
    t = np.maximum(t, t_min)[..., None]
    return np.clip((img - airlight) / t + airlight, 0, 1).astype(np.float32)


def inverse_low_light(img: np.ndarray, params: dict) -> np.ndarray:
    """Undo y = gain x^gamma (known parameters), else gamma 1/2.2 with CLAHE; then NLM for the amplified noise."""
    if "gain" in params and "gamma" in params:
        out = np.power(np.clip(img / float(params["gain"]), 0, 1), 1 / float(params["gamma"]))
        noise = np.sqrt(float(params.get("shot", 0.0)) * 0.2 + float(params.get("read", 0.0)) ** 2)
        gain_slope = 1 / (float(params["gamma"]) * float(params["gain"]) ** (1 / float(params["gamma"])))
        return denoise_nlm(out.astype(np.float32), max(noise * gain_slope * 2, 0.01))
    out = np.power(img, 1 / 2.2).astype(np.float32)
    lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(_u8(lab[..., 0] / 100)).astype(np.float32) / 255 * 100
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0, 1)


def inverse_exposure(img: np.ndarray, gain: float) -> np.ndarray:
    """Undo a linear-light gain (clipped highlights stay lost)."""
    lin = np.power(np.clip(img, 0, 1), _DISPLAY_GAMMA) / gain
    return np.power(lin, 1 / _DISPLAY_GAMMA).astype(np.float32)


def inverse_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Undo out = mu + f (x - mu) about the mean luminance."""
    mu = float(luma(img).mean())
    return np.clip(mu + (img - mu) / factor, 0, 1).astype(np.float32)


def remove_veil(img: np.ndarray, veil: float, level: float) -> np.ndarray:
    return np.clip((img - veil * level) / max(1 - veil, 1e-3), 0, 1).astype(np.float32)


def median(img: np.ndarray, ksize: int) -> np.ndarray:
    return _f32(cv2.medianBlur(_u8(img), ksize))


def destripe(img: np.ndarray, vertical: bool = True, smooth: float = 5.0) -> np.ndarray:
    """Remove per-column (or per-row) offsets: subtract the column profile minus its smoothed version."""
    from scipy.ndimage import gaussian_filter1d

    work = img if vertical else img.transpose(1, 0, 2)
    profile = work.mean(axis=0, keepdims=True)
    offsets = profile - gaussian_filter1d(profile, smooth, axis=1, mode="reflect")
    out = np.clip(work - offsets, 0, 1)
    return (out if vertical else out.transpose(1, 0, 2)).astype(np.float32)


def restore_one(img: np.ndarray, name: str, params: Optional[dict] = None) -> np.ndarray:
    """Undo one degradation (by its operator name) as well as a classical tool can."""
    p = params or {}
    if name == "gaussian_noise":
        return denoise_nlm(img, p.get("sigma"))
    if name == "gaussian_blur":
        return wiener_deconvolve(img, gaussian_psf(float(p.get("sigma", 1.5))), 0.01)
    if name == "motion_blur":
        return wiener_deconvolve(img, motion_psf(float(p.get("length", 9)), float(p.get("angle", 0.0))), 0.03)
    if name == "downsample":
        return unsharp(img, sigma=max(float(p.get("scale", 2.0)) / 2, 0.5), amount=0.5)
    if name == "jpeg":  # deblocking: an edge-preserving bilateral filter (NLM at any strength did worse here)
        return _f32(cv2.bilateralFilter(_u8(img), 5, 20, 3))
    if name == "haze":
        if p.get("ir") == "blur":  # the thermal substitute for haze is a mild blur
            return wiener_deconvolve(img, gaussian_psf(float(p.get("ir_sigma", 1.5))), 0.01)
        return dehaze_dark_channel(img)
    if name in ("rain", "snow"):
        level = 0.75 if name == "rain" else 0.85  # the veil's gray level in the rendering model
        out = remove_veil(img, float(p.get("veil", 0.0)), level)
        return median(out, 5)
    if name == "low_light":
        return inverse_low_light(img, p)
    if name == "over_exposure":
        return inverse_exposure(img, float(p.get("gain", 2.0)))
    if name in ("low_contrast", "high_contrast"):
        default = 0.5 if name == "low_contrast" else 1.8
        return inverse_contrast(img, float(p.get("factor", default)))
    if name == "ir_stripes":
        return destripe(img, vertical=p.get("orientation", "vertical") == "vertical")
    raise UserError(f"no restoration known for degradation '{name}'")


def _as_records(degradations: Sequence[Record]) -> list[dict]:
    """Names apply to both sources (parameters unknown); records keep their own source and parameters."""
    out = []
    for d in degradations:
        if isinstance(d, str):
            out += [{"name": d, "params": {}, "source": "a"}, {"name": d, "params": {}, "source": "b"}]
        else:
            out.append(d)
    return out


def restore_sources(a: np.ndarray, b: np.ndarray, degradations: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Undo each source's degradations, last applied first."""
    imgs = {"a": np.asarray(a, np.float32), "b": np.asarray(b, np.float32)}
    for rec in reversed(_as_records(degradations)):
        src = rec.get("source", "a")
        if src not in imgs:
            raise UserError(f"degradation record source must be 'a' or 'b', got {src!r}")
        imgs[src] = restore_one(imgs[src], rec["name"], rec.get("params"))
    return imgs["a"], imgs["b"]


# ----------------------------------------------------------------------------------------------------
# Fusion rules (a, b: HxWx3 float32 in [0, 1])
# ----------------------------------------------------------------------------------------------------


def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a + b) / 2


def fuse_laplacian(a: np.ndarray, b: np.ndarray, levels: int = 5) -> np.ndarray:
    """Laplacian pyramids of both, details by the larger magnitude, the coarsest level averaged."""
    levels = int(max(1, min(levels, np.floor(np.log2(min(a.shape[:2]))) - 3)))

    def pyramid(img: np.ndarray) -> list[np.ndarray]:
        gauss = [img]
        for _ in range(levels):
            gauss.append(cv2.pyrDown(gauss[-1]))
        lap = [g - cv2.pyrUp(gn, dstsize=(g.shape[1], g.shape[0])) for g, gn in zip(gauss[:-1], gauss[1:])]
        return lap + [gauss[-1]]

    pa, pb = pyramid(a), pyramid(b)
    fused = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(pa[:-1], pb[:-1])] + [(pa[-1] + pb[-1]) / 2]
    out = fused[-1]
    for detail in reversed(fused[:-1]):
        out = cv2.pyrUp(out, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return np.clip(out, 0, 1)


def fuse_guided(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Guided-filter fusion (Li, Kang, Hu 2013): two-scale decomposition (31x31 mean), saliency = Gaussian-
    smoothed |Laplacian|, binary weight maps refined by guided filters (r 45, eps 0.3 base; r 7, eps 1e-6 detail)."""
    imgs = [a, b]
    base = [cv2.blur(x, (31, 31), borderType=cv2.BORDER_REFLECT) for x in imgs]
    detail = [x - bx for x, bx in zip(imgs, base)]
    grays = [luma(x) for x in imgs]
    saliency = [cv2.GaussianBlur(np.abs(cv2.Laplacian(g, cv2.CV_32F)), (11, 11), 5) for g in grays]
    pick = (saliency[0] >= saliency[1]).astype(np.float32)
    masks = [pick, 1 - pick]
    wb = [np.clip(guided_filter(g, m, 45, 0.3), 0, 1) for g, m in zip(grays, masks)]
    wd = [np.clip(guided_filter(g, m, 7, 1e-6), 0, 1) for g, m in zip(grays, masks)]
    sb, sd = wb[0] + wb[1] + 1e-6, wd[0] + wd[1] + 1e-6
    out = sum((wb[k] / sb)[..., None] * base[k] + (wd[k] / sd)[..., None] * detail[k] for k in range(2))
    return np.clip(out, 0, 1)


def fuse_mertens(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mertens, Kautz, Van Reeth exposure fusion (cv2.createMergeMertens: contrast, saturation, well-exposedness)."""
    out = cv2.createMergeMertens().process([_u8(a[..., ::-1]), _u8(b[..., ::-1])])
    return np.clip(out[..., ::-1], 0, 1).astype(np.float32)


def fuse_focus(a: np.ndarray, b: np.ndarray, window: int = 9) -> np.ndarray:
    """Multi-focus rule: local energy of the Laplacian decides per pixel; the decision map is cleaned by a
    median filter and softened along edges by a guided filter."""
    ga, gb = luma(a), luma(b)

    def focus(g: np.ndarray) -> np.ndarray:
        return cv2.blur(cv2.Laplacian(g, cv2.CV_32F, ksize=3) ** 2, (window, window), borderType=cv2.BORDER_REFLECT)

    decision = (focus(ga) >= focus(gb)).astype(np.uint8)
    decision = cv2.medianBlur(decision * 255, 15).astype(np.float32) / 255
    weight = np.clip(guided_filter((ga + gb) / 2, decision, 8, 1e-3), 0, 1)[..., None]
    return np.clip(weight * a + (1 - weight) * b, 0, 1)


_RULES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": fuse_average,
    "laplacian": fuse_laplacian,
    "guided": fuse_guided,
    "mertens": fuse_mertens,
    "focus": fuse_focus,
}


def fuse(a: np.ndarray, b: np.ndarray, task: str, rule: str = "auto") -> np.ndarray:
    """Fuse two HxWx3 images. VIF (a visible, b infrared): the luminance is fused and the visible colour kept."""
    if rule == "auto":
        if task not in AUTO_RULE:
            raise UserError(f"unknown task '{task}'; expected one of {', '.join(AUTO_RULE)}")
        rule = AUTO_RULE[task]
    if rule not in _RULES:
        raise UserError(f"unknown fusion rule '{rule}'; choose from {', '.join(FUSION_RULES)}")
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise UserError(f"source sizes differ: {a.shape} vs {b.shape}")
    if task == "vif" and rule != "mertens":
        ycc = cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb)
        y_a = np.repeat(ycc[..., :1], 3, axis=2)
        y_b = gray_of(b)
        ycc[..., 0] = _RULES[rule](y_a, y_b)[..., 0]
        return np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0, 1)
    return _RULES[rule](a, b).astype(np.float32)


def restore_and_fuse(a: np.ndarray, b: np.ndarray, task: str, degradations: Sequence[Record] = (),
                     fusion: str = "auto", restore: bool = True) -> np.ndarray:
    """The baseline cascade on two HxWx3 float32 images in [0, 1]: restore each source by its degradation
    records (or names, then both sources), then fuse. Returns HxWx3 float32 in [0, 1]."""
    if restore and degradations:
        a, b = restore_sources(a, b, degradations)
    return fuse(a, b, task, fusion)


# ----------------------------------------------------------------------------------------------------
# `mmaif baseline`
# ----------------------------------------------------------------------------------------------------


def prepared_jobs(split_dir: Path) -> list[tuple[PairRecord, Sequence[Record]]]:
    """Each sample of a prepared split as a pair of its degraded inputs, with its degradation records."""
    index_path = split_dir / "index.json"
    if not index_path.is_file():
        raise UserError(f"{split_dir} is not a prepared split: {index_path} not found (run `mmaif data prepare`)")
    try:
        samples = json.loads(index_path.read_text())["samples"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{index_path}: not a valid prepared index ({exc})") from None
    if not samples:
        raise UserError(f"{index_path}: the split has no samples")
    return [(PairRecord(s["id"], s["task"], split_dir / s["a"], split_dir / s["b"]), s.get("degradations", []))
            for s in samples]


def dataset_jobs(root: Path, task: Optional[str] = None, split: Optional[str] = None
                 ) -> list[tuple[PairRecord, Sequence[Record]]]:
    """Every pair of a benchmark in its native layout, with no degradation records: there is nothing to restore by."""
    return [(rec, []) for rec in discover(root, task=task, split=split)]


def run_jobs(jobs: list[tuple[PairRecord, Sequence[Record]]], out_dir: Path, fusion: str = "auto",
             restore: bool = True, progress: bool = True) -> int:
    """Restore and fuse each pair; writes `<out_dir>/<pair_id>.png`, what `mmaif evaluate` reads."""
    tty = sys.stderr.isatty()
    for k, (pair, degradations) in enumerate(jobs, 1):
        a, b, _ = load_pair(pair, with_gt=False)
        fused = restore_and_fuse(a, b, pair.task, degradations, fusion, restore)
        write_image(out_dir / f"{pair.pair_id}.png", fused)
        if progress and (tty or k == len(jobs) or k % max(1, len(jobs) // 10) == 0):
            lead = "\r" if tty else ""
            print(f"{lead}  fused {k}/{len(jobs)} ({pair.pair_id})  ", end="" if tty and k < len(jobs) else "\n",
                  file=sys.stderr, flush=True)
    return len(jobs)


def _run(args: argparse.Namespace) -> int:
    if args.fusion not in FUSION_RULES:  # argparse checks choices; kept for Python callers
        raise UserError(f"unknown fusion rule '{args.fusion}'")
    if (args.task or args.split) and not args.dataset:
        raise UserError("--task and --split choose the pairs of a --dataset")
    if args.no_restore and args.dataset:  # it would change nothing: say so rather than take it
        raise UserError("--no-restore goes with --prepared: a --dataset records no degradations, so nothing is "
                        "restored there")
    start = time.time()
    if args.dataset:
        jobs = dataset_jobs(args.dataset, args.task, args.split)
        what = f"{args.fusion} fusion (a benchmark's sources as they are)"
    else:
        jobs = prepared_jobs(args.prepared)
        what = ("no restoration" if args.no_restore else "oracle restoration") + f" + {args.fusion} fusion"
    n = run_jobs(jobs, args.out, args.fusion, not args.no_restore)
    print(f"fused {n} pair(s) with {what} in {time.time() - start:.1f} s: wrote {args.out}/<id>.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="classical restoration + fusion on a prepared split (or classical fusion of a benchmark)",
        description="Restore each source by its recorded degradations (NLM, Wiener, dark channel, ...), then "
        "fuse with a classical rule. Writes <out>/<id>.png for every sample of the split. With --dataset, a "
        "benchmark's pairs are fused as they are (it records no degradations to restore by).",
        epilog="examples:\n"
        "  mmaif baseline --prepared prepared/test --out runs/baseline/test_fused\n"
        "  mmaif baseline --prepared prepared/test --out runs/average_only --fusion average --no-restore\n"
        "  mmaif evaluate --prepared prepared/test --fused runs/baseline/test_fused --json metrics/baseline.json\n"
        "  mmaif baseline --dataset ../MEFB --out fused/mefb_classical    # a benchmark, fused by the rule of its task\n"
        "fusion rules: auto (vif: guided, mef: mertens, mff: focus), average, laplacian, guided, mertens, focus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pairs = p.add_mutually_exclusive_group(required=True)
    pairs.add_argument("--prepared", type=Path, help="prepared split folder (with index.json)")
    pairs.add_argument("--dataset", type=Path, help="a benchmark in its native layout (docs/data.md), or a folder of "
                       "several: its sources fused as they are, <out>/<pair>.png as `mmaif fuse --dataset` writes")
    p.add_argument("--task", choices=tuple(AUTO_RULE), help="--dataset: its task, where the folder names do not tell")
    p.add_argument("--split", help="--dataset: the pairs listed in <root>/<split>.txt, or under a <split> folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the fused images")
    p.add_argument("--fusion", choices=FUSION_RULES, default="auto", help="fusion rule (default: auto, per task)")
    p.add_argument("--no-restore", action="store_true", help="--prepared: fuse the degraded inputs directly")
    p.set_defaults(func=_run)
