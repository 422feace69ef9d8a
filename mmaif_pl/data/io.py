"""Image files in and out.

Every image enters the project as float32 RGB in [0, 1], HxWx3: gray is replicated to three channels,
16-bit is scaled by 65535, alpha is dropped, palettes are expanded. Output is lossless PNG written under a
temporary name and renamed, so an interrupted run never leaves half an image behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..atomic import write_bytes_atomic  # noqa: F401  (re-exported)
from ..errors import ImageReadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sorted_entries(folder: Path) -> list[Path]:
    """What `folder` holds, sorted by name: Path's own order, 10x faster to sort."""
    return sorted(folder.iterdir(), key=lambda p: p.name)


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Images directly in `folder`, keyed by lower-case stem (so `Sky_A.PNG` and `sky_a.png` meet)."""
    found: dict[str, Path] = {}
    for p in sorted_entries(Path(folder)):
        if p.is_file() and is_image(p) and not p.name.startswith("."):
            found.setdefault(p.stem.lower(), p)
    return found


def _to_float(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.ndim == 3 and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.ndim == 3 and out.shape[2] >= 3:
        out = out[:, :, :3]  # alpha (and any extra band) dropped
    else:
        raise ImageReadError(f"{path}: unsupported image shape {arr.shape}")
    return np.ascontiguousarray(out)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read png/jpg/jpeg/bmp/tif/tiff (any case, 8/16-bit, gray/RGB/RGBA/palette) as HxWx3 float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    if not is_image(path):
        raise ImageReadError(f"{path}: not a supported image type ({', '.join(IMAGE_EXTENSIONS)})")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    # OpenCV keeps 16-bit and alpha as they are; it returns None (no exception) on a corrupt file.
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        return _read_with_pillow(path)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return _to_float(arr, path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception:
        return _read_with_pillow(path)  # e.g. JPEG-compressed or palette TIFFs tifffile cannot decode
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (CxHxW) storage
    return _to_float(arr, path)


def _read_with_pillow(path: Path) -> np.ndarray:
    """Fallback decoder (palette images, exotic TIFF codecs); a file neither can read is corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" or im.mode == "PA":
                im = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.uint16)
                return _to_float(arr, path)
            elif im.mode not in ("L", "RGB", "RGBA", "LA", "1"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 2:  # LA
        arr = arr[:, :, 0]
    return _to_float(arr, path)


def to_numpy(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """A CHW / 1xCHW tensor or HxW(x3) array in [0, 1] as HxWx3 float32."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        img = t.numpy()
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 float array -> 3xHxW float32 tensor (no copy of the values' range)."""
    return torch.from_numpy(np.ascontiguousarray(to_numpy(img).transpose(2, 0, 1)))


def quantize(img: np.ndarray | torch.Tensor, bits: int = 8) -> np.ndarray:
    """[0, 1] floats to uint8 / uint16 with round-half-to-even, the same on every machine."""
    arr = np.clip(to_numpy(img), 0.0, 1.0)
    if bits == 8:
        return np.rint(arr * 255.0).astype(np.uint8)
    if bits == 16:
        return np.rint(arr * 65535.0).astype(np.uint16)
    raise ValueError(f"bits must be 8 or 16, got {bits}")


def encode_png(img: np.ndarray | torch.Tensor, bits: int = 8) -> bytes:
    arr = quantize(img, bits)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def write_image(path: str | os.PathLike, img: np.ndarray | torch.Tensor, bits: int = 8) -> Path:
    """Lossless PNG (8- or 16-bit RGB), written atomically. The path must end in .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: images are written as .png (lossless)")
    return write_bytes_atomic(path, encode_png(img, bits))
