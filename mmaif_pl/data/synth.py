"""The embedded default dataset, built offline and deterministically from scikit-image's photographs.

Each pair comes from a crop of a packaged photograph (public domain / CC0, see docs/data.md):

- MFF: complementary defocus of the all-in-focus crop along a depth map (the stereo disparity of
  `motorcycle`, else a near object over a ground-plane ramp); a = near in focus, b = far in focus;
  target = the crop itself.
- MEF: the crop's linear radiance through a gamma camera response at two exposures (-EV and +EV) with
  clipping and 8-bit quantisation; a = under-exposed, b = over-exposed; target = the crop itself.
- VIF (synthetic): a = low-light visible (a dimmed exposure with deep shadows where detail is lost and
  sensor noise), b = pseudo-thermal (smooth, low-texture emission with warm targets); target = the
  teacher's fusion of the two (`teacher.py`). Real benchmarks are the real test of VIF.

Photographs are split by identity: test crops come from photographs no training crop uses.
Every random choice is drawn from a Generator seeded by (task, split, index), and the PNG encoder is
deterministic, so the bytes are identical on every run and `data.dvc` stays valid.
"""
from __future__ import annotations

import json
import sys
import time
import zlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_dir_atomic
from . import teacher
from .color import luma
from .io import encode_png, write_bytes_atomic

TRAIN_PHOTOS = (
    "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
    "immunohistochemistry", "retina", "brick", "grass", "gravel", "moon", "coins",
)
TEST_PHOTOS = ("coffee", "chelsea", "camera")
SIZES = {"train": (192, 192), "test": (192, 256)}  # (H, W); multiples of 16 (codec factor x patch)
COUNTS = {"train": 64, "test": 12}
TASKS = ("vif", "mef", "mff")
VERSION = 1  # bump when the synthesis changes: the bytes (and data.dvc) change with it


@lru_cache(maxsize=None)
def photo(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A packaged photograph as HxWx3 float64 in [0, 1], and its near-to-far depth in [0, 1] if known."""
    import skimage.data as d

    depth = None
    if name.startswith("motorcycle"):
        left, right, disp = d.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
        if name == "motorcycle_left":  # the disparity map is registered to the left view
            disp = np.where(np.isfinite(disp), disp, 0).astype(np.float64)
            depth = 1.0 - (disp - disp.min()) / max(np.ptp(disp), 1e-6)  # large disparity = near
            # The stereo map has holes and blocky edges; smooth it so the defocus has no seams.
            depth = cv2.GaussianBlur(cv2.medianBlur(depth.astype(np.float32), 5), (0, 0), 4.0).astype(np.float64)
    else:
        img = getattr(d, name)()
    img = np.asarray(img, dtype=np.float64) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3], depth


def _rng(task: str, split: str, index: int) -> np.random.Generator:
    key = zlib.crc32(f"{task}/{split}".encode())
    return np.random.default_rng([VERSION, key, index])


def _crop(img: np.ndarray, depth: np.ndarray | None, size: tuple[int, int], rng: np.random.Generator):
    """A random crop covering 45-100% of the photo's short side, resized to `size` (area filter)."""
    H, W = img.shape[:2]
    h_out, w_out = size
    scale = rng.uniform(0.45, 1.0)
    ch = int(min(H, W * h_out / w_out) * scale)
    cw = int(ch * w_out / h_out)
    y0 = int(rng.integers(0, H - ch + 1))
    x0 = int(rng.integers(0, W - cw + 1))
    flip = bool(rng.random() < 0.5)

    def cut(x: np.ndarray) -> np.ndarray:
        x = cv2.resize(x[y0:y0 + ch, x0:x0 + cw], (w_out, h_out), interpolation=cv2.INTER_AREA)
        return x[:, ::-1].copy() if flip else x

    return cut(img), (cut(depth) if depth is not None else None)


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise in [0, 1]: the raw material of masks and emission fields."""
    n = cv2.GaussianBlur(rng.standard_normal(shape), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (n - n.min()) / max(np.ptp(n), 1e-9)


def _synthetic_depth(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Near object(s) before a background (Lytro-like): depth 0.05 on the objects, 0.85-1.0 behind."""
    h, w = shape
    ramp = 1.0 - 0.15 * np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))  # bottom rows are nearer
    blob = _smooth_noise(shape, sigma=min(h, w) / 6, rng=rng)
    near = (blob > np.quantile(blob, rng.uniform(0.55, 0.75))).astype(np.float64)
    near = cv2.GaussianBlur(near, (0, 0), 1.5)
    return near * 0.05 + (1 - near) * ramp


def _defocus(img: np.ndarray, sigma_map: np.ndarray, levels: int = 6) -> np.ndarray:
    """Spatially varying Gaussian blur: blend of a small stack of uniformly blurred copies."""
    max_sigma = float(sigma_map.max())
    sigmas = np.linspace(0.0, max(max_sigma, 1e-3), levels)
    stack = [img if s < 0.3 else cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REFLECT) for s in sigmas]
    pos = np.clip(sigma_map / sigmas[-1] * (levels - 1), 0, levels - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, levels - 1)
    frac = (pos - lo)[..., None]
    stack_arr = np.stack(stack)  # L x H x W x 3
    rows, cols = np.indices(sigma_map.shape)
    return (1 - frac) * stack_arr[lo, rows, cols] + frac * stack_arr[hi, rows, cols]


def make_mff(img, depth, rng):
    """Complementary defocus: a focuses near (depth 0), b focuses far (depth 1)."""
    if depth is None:
        depth = _synthetic_depth(img.shape[:2], rng)
    strength = rng.uniform(2.0, 4.0)  # blur sigma (px) at a full depth unit from the focal plane
    a = _defocus(img, strength * np.abs(depth - 0.0))
    b = _defocus(img, strength * np.abs(depth - 1.0))
    return a, b, img


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0, 1), 2.2)


def _camera(lin: np.ndarray, rng: np.random.Generator, read_noise: float) -> np.ndarray:
    """Gamma response, sensor noise, clipping and 8-bit quantisation."""
    y = np.power(np.clip(lin, 0, None), 1 / 2.2)
    y = y + rng.normal(0.0, read_noise, y.shape)
    return np.round(np.clip(y, 0.0, 1.0) * 255.0) / 255.0


def make_mef(img, depth, rng):
    """Two exposures of the crop's radiance; target = the well-exposed crop."""
    lin = _to_linear(img)
    ev_under, ev_over = rng.uniform(1.5, 3.0), rng.uniform(1.2, 2.5)
    a = _camera(lin * 2.0 ** -ev_under, rng, read_noise=0.004)
    b = _camera(lin * 2.0 ** ev_over, rng, read_noise=0.002)
    return a, b, img


def _pseudo_thermal(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Emission, not reflectance: smooth low-texture background, edges of the scene, warm targets."""
    h, w = img.shape[:2]
    gray = luma(img, np.float64)
    structure = cv2.GaussianBlur(gray, (0, 0), 2.0)
    background = 0.25 + 0.25 * structure + 0.15 * _smooth_noise((h, w), min(h, w) / 4, rng)
    targets = np.zeros((h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 4))):  # people / engines: upright warm ellipses
        cy, cx = rng.uniform(0.2, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.08, 0.2) * h, rng.uniform(0.03, 0.09) * w
        blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
        targets = np.maximum(targets, blob * rng.uniform(0.75, 1.0))
    thermal = np.maximum(background, targets)
    thermal = np.round(np.clip(thermal + rng.normal(0, 0.005, thermal.shape), 0, 1) * 255) / 255
    return np.repeat(thermal[:, :, None], 3, axis=2)


def make_vif(img, depth, rng):
    """Low-light visible with shadowed regions, pseudo-thermal infrared; target from the teacher."""
    h, w = img.shape[:2]
    shadow = _smooth_noise((h, w), min(h, w) / 5, rng)
    lost = np.clip((shadow - 0.55) / 0.15, 0, 1)  # where the night swallows the scene
    gain = rng.uniform(0.05, 0.18) * (1 - 0.9 * lost)
    visible = _camera(_to_linear(img) * gain[..., None], rng, read_noise=0.006)
    thermal = _pseudo_thermal(img, rng)
    target = teacher.fuse(visible.astype(np.float32), thermal.astype(np.float32), "vif")
    return visible, thermal, target.astype(np.float64)


MAKERS = {"vif": make_vif, "mef": make_mef, "mff": make_mff}


def make_pair(task: str, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    rng = _rng(task, split, index)
    photos = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    name = photos[index % len(photos)]
    img, depth = photo(name)
    crop, crop_depth = _crop(img, depth, SIZES[split], rng)
    a, b, gt = MAKERS[task](crop, crop_depth, rng)
    return a, b, gt, {"photo": name, "task": task, "split": split, "index": index}


def build(out: str | Path = "data", counts: dict[str, int] | None = None, log=print) -> dict:
    """Write the dataset to `out` (built in a temporary folder beside it, then renamed into place)."""
    out = Path(out)
    counts = counts or COUNTS
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it to rebuild")
    manifest: dict = {"version": VERSION, "photos": {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS}, "pairs": []}
    start = time.perf_counter()

    def write(tmp: Path) -> None:
        for task in TASKS:
            for split, n in counts.items():
                for i in range(n):
                    a, b, gt, meta = make_pair(task, split, i)
                    name = f"{task}_{split}_{i:03d}"
                    folder = tmp / task / split
                    for sub, img in (("A", a), ("B", b), ("gt", gt)):
                        write_bytes_atomic(folder / sub / f"{name}.png", encode_png(img.astype(np.float32)))
                    manifest["pairs"].append({"name": name, **meta})
                log(f"  {task}/{split}: {n} pairs", file=sys.stderr) if log is print else log(f"{task}/{split}: {n}")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    if not write_dir_atomic(out, write, replace=False):
        raise FileExistsError(f"{out} exists; remove it to rebuild")  # made by another process meanwhile
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"pairs": len(manifest["pairs"]), "bytes": size, "seconds": time.perf_counter() - start, "out": str(out)}
